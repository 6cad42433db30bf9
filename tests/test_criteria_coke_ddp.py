"""CoKe under torch.distributed (gloo, 2 CPU processes): each rank feeds half of every batch and ends with
the state of one process fed the whole batch; the mean of the ranks' losses equals the one-process loss."""

from __future__ import annotations

import torch
from gloo import run_on_ranks

from torchstrap_runtime.criteria import build_criterion

N, D, STEPS, BATCH = 96, 8, 3, 32


def make_criteria() -> dict[str, torch.nn.Module]:
    shared = {"embedding_size": D, "num_samples": N, "dual_lr": 2.0, "seed": 0}
    return {"single": build_criterion("coke_single_view", {**shared, "num_clusters": [4, 6], "stage": 1,
                                                           "soft_label_size": 2}),
            "single_kmeans": build_criterion("coke_single_view", {**shared, "num_clusters": [5], "init": "kmeans++"}),
            "double": build_criterion("coke_double_view", {**shared, "num_clusters": [5, 3], "min_size_ratio": 1.0}),
            "multi": build_criterion("coke_multi_view", {**shared, "num_clusters": [5], "num_small_crops": 2})}


def batches() -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(N, D, generator=g)
    order = torch.randperm(N, generator=g)
    out = []
    for step in range(STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        out.append(([data[idx] + 0.1 * torch.randn(BATCH, D, generator=g) for _ in range(4)], idx))
    return out


def run(criteria: dict[str, torch.nn.Module], rank: int, world: int) -> list[float]:
    """Three epochs; each rank takes its contiguous slice of every batch. Returns the losses."""
    losses = []
    views_of = {"single": 1, "single_kmeans": 1, "double": 2, "multi": 4}
    for _ in range(3):
        for views, idx in batches():
            part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
            for name, criterion in criteria.items():
                mine = [v[part] for v in views[:views_of[name]]]
                losses.append(float(criterion(mine, idx[part], [2 * v for v in mine])))
        for criterion in criteria.values():
            criterion.end_epoch()
    return losses


def rank_job(rank: int, world: int) -> dict:
    criteria = make_criteria()
    return {"losses": run(criteria, rank, world), **{name: c.state_dict() for name, c in criteria.items()}}


def test_two_ranks_match_one_process(tmp_path):
    reference = make_criteria()
    losses = torch.tensor(run(reference, rank=0, world=1))
    states = run_on_ranks(rank_job, 2, tmp_path)
    mean_loss = (torch.tensor(states[0]["losses"]) + torch.tensor(states[1]["losses"])) / 2
    assert torch.allclose(mean_loss, losses, atol=1e-5)
    for rank, state in enumerate(states):
        for name, criterion in reference.items():
            for key, expected in criterion.state_dict().items():
                got = state[name][key]
                if expected.is_floating_point():
                    assert torch.allclose(got, expected, atol=1e-5), (rank, name, key)
                else:
                    assert torch.equal(got, expected), (rank, name, key)
    assert (reference["double"].labels >= 0).all() and reference["single"].label_weights.sum() > 0
