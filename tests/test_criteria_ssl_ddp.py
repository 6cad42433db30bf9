"""The SSL criteria that gather or all-reduce across ranks, under torch.distributed (gloo, 2 CPU processes):
each rank feeds its half of the batch; the mean of the ranks' losses equals the loss of one process fed the
whole batch, and each rank's input gradients divided by the world size (DDP averages gradients) equal that
process's gradients for its rows. DINO's center ends the same on every rank as in one process. With unequal
shares (5 and 7 rows) the losses weighted by the ranks' rows equal the one-process loss."""

from __future__ import annotations

import torch
from gloo import run_on_ranks

from torchstrap_runtime.criteria import build_criterion

BATCH, WIDTH, STEPS, WORLD = 12, 10, 3, 2
UNEQUAL = (0, 5, 12)   # rank r holds rows UNEQUAL[r]:UNEQUAL[r + 1]
# name: (params, student views, teacher views)
CASES = {
    "simclr": ({"temperature": 0.2}, 2, 0),
    "vicreg": ({}, 2, 0),
    "barlow_twins": ({"lambd": 0.02}, 2, 0),
    "mocov3": ({"temperature": 0.5}, 2, 2),
    "dino": ({"out_dim": WIDTH, "nepochs": 3, "warmup_teacher_temp_epochs": 2, "teacher_temp": 0.07}, 4, 2),
}


def make_criteria() -> dict[str, torch.nn.Module]:
    return {name: build_criterion(name, params).double() for name, (params, _, _) in CASES.items()}


def step_inputs(step: int, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 * step + len(name))
    _, students, teachers = CASES[name]
    base = torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64)
    student = [base + 0.5 * torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64) for _ in range(students)]
    teacher = [2 * base + torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64) for _ in range(teachers)]
    return student, teacher


def run(criteria: dict[str, torch.nn.Module], rank: int, world: int, bounds: tuple[int, ...] | None = None
        ) -> dict[str, list]:
    """STEPS steps of every criterion on this rank's rows (an equal share, or bounds[rank]:bounds[rank + 1]);
    (loss, student grads, teacher grads) per step."""
    bounds = bounds or tuple(r * BATCH // world for r in range(world + 1))
    rows = slice(bounds[rank], bounds[rank + 1])
    out: dict[str, list] = {name: [] for name in criteria}
    for step in range(STEPS):
        for name, criterion in criteria.items():
            if name == "dino":
                criterion.set_epoch(step)
            student, teacher = step_inputs(step, name)
            student = [s[rows].clone().requires_grad_() for s in student]
            teacher = [t[rows].clone().requires_grad_() for t in teacher]
            loss = criterion(student, teacher or None)
            loss.backward()
            out[name].append((loss.detach(), [s.grad for s in student],
                              [torch.zeros_like(t) if t.grad is None else t.grad for t in teacher]))
    return out


def rank_job(rank: int, world: int) -> dict:
    criteria, unequal = make_criteria(), make_criteria()
    return {"results": run(criteria, rank, world), "dino": criteria["dino"].state_dict(),
            "unequal": run(unequal, rank, world, UNEQUAL), "unequal_dino": unequal["dino"].state_dict()}


def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    reference = make_criteria()
    expected = run(reference, rank=0, world=1)
    ranks = run_on_ranks(rank_job, WORLD, tmp_path)
    for name in CASES:
        for step in range(STEPS):
            loss, student_grads, teacher_grads = expected[name][step]
            parts = [ranks[r]["results"][name][step] for r in range(WORLD)]
            mean_loss = sum(p[0] for p in parts) / WORLD
            assert torch.allclose(mean_loss, loss, rtol=1e-10), (name, step, float(mean_loss), float(loss))
            for i, g in enumerate(student_grads):
                got = torch.cat([p[1][i] for p in parts]) / WORLD
                assert torch.allclose(got, g, rtol=1e-8, atol=1e-12), (name, step, "student", i)
            for i, g in enumerate(teacher_grads):
                got = torch.cat([p[2][i] for p in parts]) / WORLD
                assert torch.allclose(got, g, rtol=1e-8, atol=1e-12), (name, step, "teacher", i)
    for name in CASES:
        for step in range(STEPS):
            weighted = sum(ranks[r]["unequal"][name][step][0] * (UNEQUAL[r + 1] - UNEQUAL[r]) for r in range(WORLD))
            assert torch.allclose(weighted / BATCH, expected[name][step][0], rtol=1e-10), (name, step, "unequal")
    for r in range(WORLD):
        for state in ("dino", "unequal_dino"):
            for key, value in reference["dino"].state_dict().items():
                assert torch.allclose(ranks[r][state][key].to(value.dtype), value, rtol=1e-12), (r, state, key)
    assert reference["dino"].center.abs().sum() > 0
