"""CoKe under torch.distributed (gloo, 2 CPU processes): every rank ends with the single-process state."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchstrap_runtime.criteria import CoKeMultiView, CoKeSingleView

N, D, STEPS, BATCH = 96, 8, 3, 32


def make_criteria() -> dict[str, torch.nn.Module]:
    return {"single": CoKeSingleView(embedding_size=D, num_samples=N, num_clusters=[4, 6], seed=0),
            "multi": CoKeMultiView(embedding_size=D, num_clusters=5, center_update="online", seed=0)}


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N, D, generator=g)
    order = torch.randperm(N, generator=g)
    out = []
    for step in range(STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        out.append((data[idx], data[idx] + 0.1 * torch.randn(BATCH, D, generator=g), idx))
    return out


def run(criteria: dict[str, torch.nn.Module], rank: int, world: int) -> None:
    """Feed each rank its contiguous slice of every batch; two epochs with an end_epoch between."""
    for _ in range(2):
        for view1, view2, idx in batches():
            part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
            criteria["single"](view1[part], idx[part])
            criteria["multi"]([view1[part], view2[part]])
        for criterion in criteria.values():
            criterion.end_epoch()


def worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        criteria = make_criteria()
        run(criteria, rank, world)
        torch.save({k: c.state_dict() for k, c in criteria.items()}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    reference = make_criteria()
    run(reference, rank=0, world=1)
    mp.start_processes(worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        states = torch.load(tmp_path / f"rank{rank}.pt")
        for name, criterion in reference.items():
            for key, expected in criterion.state_dict().items():
                got = states[name][key]
                if expected.is_floating_point():
                    assert torch.allclose(got, expected, atol=1e-5), (rank, name, key)
                else:
                    assert torch.equal(got, expected), (rank, name, key)
    assert (reference["single"].labels >= 0).all()
