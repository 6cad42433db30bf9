"""CoKe: online constrained k-means as a representation-learning criterion.

Qian et al., "Unsupervised Visual Representation Learning by Online Constrained K-Means", CVPR 2022
(arXiv 2105.11527). Per clustering ("head") h with K_h clusters:

- features z_i are L2-normalised; centers c_k are unit vectors;
- constrained k-means: every cluster must hold at least `min_size_ratio * N / K` points. The constraint
  is handled in the dual: a sample is assigned to argmax_k (z_i . c_k + rho_k) and after each mini-batch
  the duals take a projected step rho_k <- max(0, rho_k - dual_lr * (n_k / b - min_size_ratio / K)), so an
  under-filled cluster gets a growing bonus (n_k = points the batch put in cluster k, b = batch size);
- the encoder is trained by cross-entropy between softmax(z . c / temperature) and the pseudo-labels;
- centers ("epoch" mode, the paper's): the mean of the features assigned to each cluster during the last
  epoch, set by `end_epoch()`; "online" mode instead moves each center towards the mean of its batch
  members with momentum `center_momentum` after every batch (a mini-batch k-means step; use it when an
  epoch is long or nothing calls `end_epoch()`);
- centers are seeded from the first batch by greedy k-means++ (a distinct seed per head);
- `batch_constraint` (off by default, not in the paper) also enforces floor(min_size_ratio * b / K)
  members per cluster inside every batch, a guard against collapse when b >> K.

`CoKeSingleView` (paper, single view): the pseudo-label of sample i in epoch t is the cluster it was
assigned to in epoch t-1 (a per-sample label memory indexed by dataset index), so clustering and
discrimination are decoupled. `CoKeMultiView`: the assignment of one view supervises the prediction of
every other view (symmetrised), no memory needed. Both average the loss over heads.

CoKe needs centred features: features crowded in a small cap of the sphere (a ReLU MLP's raw output) give
near-equal scores, the duals then decide the assignments and the clustering carries little signal. So by
default (`center_features`, not in the paper, whose heads end with BatchNorm) the batch mean is subtracted
before normalising. Measured on digits, 8-d head, 3 seeds, kNN of the head's output (random encoder
0.67-0.83): no centring 0.72-0.86, `center_features` 0.85-0.88, a final BatchNorm1d 0.87-0.91.

All state (centers, duals, accumulators, label memory) lives in buffers, so `state_dict()` saves it.
With torch.distributed initialised, counts and sums are all-reduced and labels all-gathered, so every rank
holds the same state. In eval mode (`criterion.eval()`) the loss is computed against the current
assignment and no state changes. Call as criterion(views, indices): `views` a list of [B, D] tensors.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat, all_reduce_sum, is_distributed

CENTER_UPDATES = ("epoch", "online")


# ----------------------------------------------------------------------------- distributed helpers

# the collectives of torchstrap_runtime.distributed (no-ops on one process)
_distributed, _all_reduce, _all_gather_cat = is_distributed, all_reduce_sum, all_gather_cat


# ----------------------------------------------------------------------------- shared machinery

def kmeans_plus_plus(z: torch.Tensor, k: int, generator: torch.Generator, trials: int | None = None) -> torch.Tensor:
    """k unit vectors picked from the rows of z (unit norm) by greedy k-means++ seeding (cosine distance).

    Each step draws `trials` candidates with probability proportional to their distance to the chosen
    seeds and keeps the one that lowers the total distance most (as scikit-learn's k-means++ does).
    """
    n = z.shape[0]
    if n < k:  # not enough points: pad with random directions
        extra = F.normalize(torch.randn(k - n, z.shape[1], generator=generator), dim=1)
        return torch.cat([z, extra])
    trials = trials or 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = (1 - z @ z[chosen[0]]).clamp_min(0)
    for _ in range(k - 1):
        probs = closest if closest.sum() > 0 else torch.ones(n)
        candidates = torch.multinomial(probs, trials, replacement=True, generator=generator)
        new_closest = torch.minimum(closest[None], (1 - z[candidates] @ z.T).clamp_min(0))
        best = int(new_closest.sum(dim=1).argmin())
        chosen.append(int(candidates[best]))
        closest = new_closest[best]
    return z[chosen].clone()


def lower_bounded_assignment(scores: torch.Tensor, min_count: int) -> torch.Tensor:
    """argmax_k(scores) repaired so that every cluster gets at least `min_count` rows.

    Each short cluster takes the rows that lose the least score by moving to it, only from clusters
    that keep at least `min_count` rows (a greedy repair of the lower-bounded assignment; one pass
    suffices because donors never fall below the bound).
    """
    n, k = scores.shape
    labels = scores.argmax(dim=1)
    if min_count <= 0 or n < min_count * k:
        return labels
    counts = torch.bincount(labels, minlength=k)
    for c in torch.argsort(counts).tolist():  # the emptiest clusters choose first
        need = min_count - int(counts[c])
        if need <= 0:
            continue
        surplus = (counts - min_count).clamp_min(0)
        cost = scores.gather(1, labels[:, None]).squeeze(1) - scores[:, c]
        cost[surplus[labels] == 0] = float("inf")  # rows of clusters with nothing to spare stay
        order = torch.argsort(cost)
        order = order[torch.isfinite(cost[order])]
        donors = labels[order]
        rank = F.one_hot(donors, k).cumsum(0).gather(1, donors[:, None]).squeeze(1) - 1
        take = order[rank < surplus[donors]][:need]
        counts -= torch.bincount(labels[take], minlength=k)
        counts[c] += take.numel()
        labels[take] = c
    return labels


def _as_views(views: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    views = [views] if isinstance(views, torch.Tensor) else list(views)
    if not views or any(not isinstance(v, torch.Tensor) or v.dim() != 2 for v in views):
        raise ValueError(f"CoKe takes a list of [batch, embedding_size] tensors, got "
                         f"{[tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in views]}")
    return views


class _CoKe(nn.Module):
    """Centers, duals, the constrained online assignment and the center updates, for several heads."""

    input_kind = "views"

    def __init__(self, embedding_size: int, num_clusters: int | list[int] = 10, num_heads: int = 1,
                 temperature: float = 0.1, dual_lr: float = 1.0, min_size_ratio: float = 0.5,
                 batch_constraint: bool = False, center_update: str = "epoch", center_momentum: float = 0.9,
                 center_features: bool = True, seed: int = 0):
        super().__init__()
        name = type(self).__name__
        ks = [num_clusters] * num_heads if isinstance(num_clusters, int) else list(num_clusters)
        if not isinstance(num_clusters, int) and num_heads not in (1, len(ks)):
            raise ValueError(f"{name}: num_heads={num_heads} but num_clusters lists {len(ks)} clusterings")
        _check(name, "embedding_size", embedding_size, isinstance(embedding_size, int) and embedding_size >= 1, ">= 1")
        _check(name, "num_heads", num_heads, isinstance(num_heads, int) and num_heads >= 1, ">= 1")
        _check(name, "num_clusters", num_clusters, bool(ks) and all(isinstance(k, int) and k >= 2 for k in ks),
               "an int >= 2 or a list of them")
        _check(name, "temperature", temperature, temperature > 0, "> 0")
        _check(name, "dual_lr", dual_lr, dual_lr >= 0, ">= 0")
        _check(name, "batch_constraint", batch_constraint, isinstance(batch_constraint, bool), "true or false")
        _check(name, "min_size_ratio", min_size_ratio, 0 <= min_size_ratio <= 1, "in [0, 1]")
        _check(name, "center_update", center_update, center_update in CENTER_UPDATES, f"one of {CENTER_UPDATES}")
        _check(name, "center_momentum", center_momentum, 0 <= center_momentum < 1, "in [0, 1)")
        _check(name, "center_features", center_features, isinstance(center_features, bool), "true or false")
        self.embedding_size, self.num_clusters, self.num_heads = embedding_size, ks, len(ks)
        self.temperature, self.dual_lr, self.min_size_ratio = temperature, dual_lr, min_size_ratio
        self.batch_constraint = batch_constraint
        self.center_update, self.center_momentum, self.seed = center_update, center_momentum, seed
        self.center_features = center_features
        for h, k in enumerate(ks):
            self.register_buffer(f"centers_{h}", torch.zeros(k, embedding_size))
            self.register_buffer(f"duals_{h}", torch.zeros(k))
            self.register_buffer(f"center_sums_{h}", torch.zeros(k, embedding_size))
            self.register_buffer(f"center_counts_{h}", torch.zeros(k))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("epochs_done", torch.tensor(0))
        self.last_batch_sizes: list[torch.Tensor] = []  # per head: cluster counts of the last batch

    def centers(self, h: int) -> torch.Tensor:
        return getattr(self, f"centers_{h}")

    def duals(self, h: int) -> torch.Tensor:
        return getattr(self, f"duals_{h}")

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_clusters={self.num_clusters}, "
                f"temperature={self.temperature}, dual_lr={self.dual_lr}, min_size_ratio={self.min_size_ratio}, "
                f"center_update={self.center_update!r}")

    def features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The views as unit vectors; with `center_features`, minus the batch mean (over views and, when
        training, ranks; not differentiated) first."""
        fs = [v.float() for v in views]
        if self.center_features:
            with torch.no_grad():
                total = torch.cat([torch.stack([f.sum(0) for f in fs]).sum(0),
                                   torch.tensor([float(sum(f.shape[0] for f in fs))], device=fs[0].device)])
                if self.training:
                    _all_reduce(total)
                mean = total[:-1] / total[-1].clamp_min(1)
            fs = [f - mean for f in fs]
        return [F.normalize(f, dim=1) for f in fs]

    @torch.no_grad()
    def assign(self, z: torch.Tensor, h: int) -> torch.Tensor:
        """Cluster of each (normalised) feature under the current centers and dual variables."""
        return (z.float() @ self.centers(h).T + self.duals(h)).argmax(dim=1)

    @torch.no_grad()
    def _init_centers(self, z: torch.Tensor) -> None:
        z = _all_gather_cat(z.float())
        for h, k in enumerate(self.num_clusters):
            g = torch.Generator().manual_seed(self.seed + h)
            self.centers(h).copy_(kmeans_plus_plus(z.cpu(), k, g).to(z.device))
            if _distributed():
                dist.broadcast(self.centers(h), src=0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def assign_online(self, zs: list[torch.Tensor], h: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Constrained assignment of a batch (one tensor per view), then one projected dual step.

        Labels are argmax_k(z . c_k + rho_k) (the paper's online rule). With `batch_constraint`, clusters
        with fewer than floor(min_size_ratio * batch / K) members in a view first take the rows that lose
        the least by moving (`lower_bounded_assignment`), so a collapsed representation cannot meet the
        constraint by sending whole batches to one cluster after another. Returns (labels per view,
        cluster counts of the whole batch over views and ranks).
        """
        k, duals = self.num_clusters[h], self.duals(h)
        labels = []
        for z in zs:
            scores = z.float() @ self.centers(h).T + duals
            bound = math.floor(self.min_size_ratio * z.shape[0] / k) if self.batch_constraint else 0
            labels.append(lower_bounded_assignment(scores, bound))
        counts = _all_reduce(torch.bincount(torch.cat(labels), minlength=k).float())
        duals.sub_(self.dual_lr * (counts / counts.sum().clamp_min(1) - self.min_size_ratio / k)).clamp_(min=0)
        return labels, counts

    @torch.no_grad()
    def _update_centers(self, z: torch.Tensor, labels: torch.Tensor, h: int) -> None:
        k, z = self.num_clusters[h], z.float()
        sums = _all_reduce(torch.zeros(k, z.shape[1], device=z.device).index_add_(0, labels, z))
        counts = _all_reduce(torch.bincount(labels, minlength=k).float())
        if self.center_update == "epoch":
            getattr(self, f"center_sums_{h}").add_(sums)
            getattr(self, f"center_counts_{h}").add_(counts)
            return
        hit = counts > 0
        means = sums[hit] / counts[hit, None]
        c = self.centers(h)
        c[hit] = F.normalize(self.center_momentum * c[hit] + (1 - self.center_momentum) * means, dim=1)

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """Epoch mode: centers <- normalised mean of last epoch's assigned features. Returns stats to log."""
        stats: dict[str, float] = {}
        for h, k in enumerate(self.num_clusters):
            sums, counts = getattr(self, f"center_sums_{h}"), getattr(self, f"center_counts_{h}")
            if self.center_update == "epoch":
                hit = counts > 0
                self.centers(h)[hit] = F.normalize(sums[hit], dim=1)
                if counts.sum() > 0:
                    stats[f"coke/head{h}/min_cluster_ratio"] = float(counts.min() / counts.sum() * k)
                sums.zero_()
                counts.zero_()
            stats[f"coke/head{h}/dual_mean"] = float(self.duals(h).mean())
        self.epochs_done += 1
        return stats

    def _head_loss(self, z: torch.Tensor, centers: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z @ centers.T / self.temperature, targets)

    def _eval_loss(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Eval mode: each view predicts the other views' current assignments (itself when alone); no updates."""
        losses = []
        for h in range(self.num_heads):
            targets = [self.assign(z, h) for z in zs]
            pairs = [(u, v) for v in range(len(zs)) for u in range(len(zs)) if u != v] or [(0, 0)]
            losses += [self._head_loss(zs[u], self.centers(h), targets[v]) for u, v in pairs]
        return torch.stack(losses).mean()


def _check(cls: str, key: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{cls}: parameter {key!r} must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------- the two criteria

class CoKeSingleView(_CoKe):
    """CoKe with one view per sample: last epoch's assignments are this epoch's pseudo-labels.

    criterion(features, indices) with features [B, D] (or [features]) and indices [B] the samples'
    dataset indices (< num_samples). The Trainer calls `end_epoch()` after each training epoch.
    """

    def __init__(self, embedding_size: int, num_samples: int, num_clusters: int | list[int] = 10,
                 num_heads: int = 1, temperature: float = 0.1, dual_lr: float = 1.0,
                 min_size_ratio: float = 0.5, batch_constraint: bool = False, center_update: str = "epoch",
                 center_momentum: float = 0.9, center_features: bool = True, seed: int = 0):
        super().__init__(embedding_size, num_clusters, num_heads, temperature, dual_lr, min_size_ratio,
                         batch_constraint, center_update, center_momentum, center_features, seed)
        _check(type(self).__name__, "num_samples", num_samples, isinstance(num_samples, int) and num_samples >= 1,
               "an int >= 1 (the training set size)")
        self.num_samples = num_samples
        self.register_buffer("labels", torch.full((self.num_heads, num_samples), -1, dtype=torch.long))

    def forward(self, views: torch.Tensor | list[torch.Tensor], indices: torch.Tensor | None = None) -> torch.Tensor:
        views = _as_views(views)
        if len(views) != 1:
            raise ValueError(f"coke_single_view takes one view, got {len(views)}; use coke_multi_view")
        if not self.training:
            return self._eval_loss(self.features(views))
        if indices is None:
            raise ValueError("coke_single_view needs the samples' dataset indices: criterion(features, indices)")
        indices = indices.to(self.labels.device).long().view(-1)
        if indices.numel() != views[0].shape[0]:
            raise ValueError(f"coke_single_view: {indices.numel()} indices for a batch of {views[0].shape[0]}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise ValueError(f"coke_single_view: sample index {int(indices.max())} outside "
                             f"[0, num_samples={self.num_samples})")
        (z,) = self.features(views)
        if not bool(self.initialized):
            self._init_centers(z.detach())
        losses, self.last_batch_sizes = [], []
        for h in range(self.num_heads):
            centers = self.centers(h).clone()  # the centers this batch is judged against
            with torch.no_grad():
                (new,), counts = self.assign_online([z], h)
                self.last_batch_sizes.append(counts)
                self._update_centers(z, new, h)
                previous = self.labels[h, indices]
                targets = torch.where(previous >= 0, previous, new)
                self.labels[h, _all_gather_cat(indices)] = _all_gather_cat(new)
            losses.append(self._head_loss(z, centers, targets))
        return torch.stack(losses).mean()


class CoKeMultiView(_CoKe):
    """CoKe with 2+ views: each view's constrained assignment supervises every other view's prediction.

    criterion(views, indices=None) with views a list of [B, D] tensors of the same B samples.
    """

    def forward(self, views: list[torch.Tensor], indices: torch.Tensor | None = None) -> torch.Tensor:
        views = _as_views(views)
        if len(views) < 2 or any(v.shape != views[0].shape for v in views):
            raise ValueError(f"coke_multi_view needs 2+ views of the same shape, got {[tuple(v.shape) for v in views]}")
        zs = self.features(views)
        if not self.training:
            return self._eval_loss(zs)
        if not bool(self.initialized):
            self._init_centers(zs[0].detach())
        losses, self.last_batch_sizes = [], []
        for h in range(self.num_heads):
            centers = self.centers(h).clone()
            with torch.no_grad():
                targets, counts = self.assign_online(zs, h)
                self.last_batch_sizes.append(counts)
                self._update_centers(torch.cat(zs), torch.cat(targets), h)
            pairs = [self._head_loss(zs[u], centers, targets[v])
                     for v in range(len(zs)) for u in range(len(zs)) if u != v]
            losses.append(torch.stack(pairs).mean())
        return torch.stack(losses).mean()
