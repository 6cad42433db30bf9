"""CoKe: online constrained k-means as a representation-learning criterion, as its authors ran it.

Qian et al., "Unsupervised Visual Representation Learning by Online Constrained K-Means", CVPR 2022
(arXiv 2105.11527; code idstcv/CoKe). Per clustering head h with K_h clusters, on unit features z:

- assignment: y_i = argmax_k (z_i . c_k + rho_k), where c are the *running* centers (`centers`);
- duals, after every mini-batch of b samples: rho <- rho - dual_lr * n_k / b + dual_lr * ratio / K
  (n_k = samples of the batch in cluster k), clamped at 0 only when ratio < 1;
- running centers: a count-weighted running mean of the features assigned this epoch, re-normalised after
  every batch; the counters reset at each epoch end, so a cluster's first batch of an epoch replaces it;
- logits: z . c' / temperature against `logit_centers` c', a copy of the running centers frozen at each
  epoch end (`end_epoch()`);
- the target of sample i is the cluster it got last epoch (a label memory indexed by dataset index; in the
  first epoch, the assignment it gets now).

Three criteria, as the authors' three recipes (`views`: projector outputs [B, D], large views first then
small crops; `predictions`: the predictor outputs in the same layout, None = the projections serve both):

- `coke_single_view`: one view; loss = beta * CE(prediction logits) + (1 - beta) * CE(projection logits),
  averaged over heads. After `stage` epochs (stage 2) the target is a soft label over the last
  `soft_label_size` assignments (weights averaged over stage-2 epochs, sharpened by exp(w /
  `soft_label_temperature`)) and the logit centers become a running average over epochs.
- `coke_double_view`: two views; each sample is assigned from the mean of its two unit projections; per
  head and per view, alpha * one-hot CE against the memory label + (1 - alpha) * soft CE against the other
  view's softmax(projection logits), for prediction and projection; scaled by 0.5 / (2 * heads).
- `coke_multi_view`: the two large views as above, plus small crops supervised by 2 * alpha one-hot +
  (1 - alpha) * (softmax of view 1 + softmax of view 2), scaled by 0.5 / (2 * crops * heads);
  loss = beta * large + (1 - beta) * small (just the large loss when there are no small crops).

With torch.distributed, features and indices are all-gathered, so every rank holds the same centers,
duals and memory, updated from the global batch. All state is in buffers (`state_dict()` resumes exactly).
In eval mode the loss uses the current assignment and no state changes.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import all_gather_cat, broadcast_tensor, get_rank, is_distributed

INITS = ("random", "kmeans++")
CENTER_UPDATES = ("online",)  # accepted for older configs: the authors' running mean is per batch


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


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_k target_ik log softmax(logits)_ik."""
    return -(F.log_softmax(logits.float(), dim=1) * target).sum(dim=1).mean()


def _as_views(views, what: str = "views") -> list[torch.Tensor]:
    views = [views] if isinstance(views, torch.Tensor) else list(views)
    if not views or any(not isinstance(v, torch.Tensor) or v.dim() != 2 for v in views):
        raise ValueError(f"CoKe takes {what} as a list of [batch, embedding_size] tensors, got "
                         f"{[tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in views]}")
    return views


def _check(cls: str, key: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{cls}: parameter {key!r} must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------- shared machinery

class PerHead:
    """A read-only list attribute of a CoKe criterion: its buffers `<attribute>_0`, `<attribute>_1`, ... one a head."""

    def __init__(self, doc: str):
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, criterion, owner: type | None = None):
        if criterion is None:
            return self
        return [getattr(criterion, f"{self.name}_{h}") for h in range(criterion.num_heads)]


class _CoKe(nn.Module):
    """Running and logit centers, duals, counters and the label memory of several heads."""

    input_kind = "views"
    memory_slots = 1

    def __init__(self, embedding_size: int, num_samples: int | None = None,
                 num_clusters: int | list[int] = (3000, 4000, 5000), num_heads: int = 1,
                 temperature: float = 0.1, dual_lr: float = 20.0, min_size_ratio: float = 0.4,
                 init: str = "random", center_features: bool = False, center_update: str = "online",
                 seed: int = 0):
        super().__init__()
        name = type(self).__name__
        ks = [num_clusters] * num_heads if isinstance(num_clusters, int) else list(num_clusters)
        if not isinstance(num_clusters, int) and num_heads not in (1, len(ks)):
            raise ValueError(f"{name}: num_heads={num_heads} but num_clusters lists {len(ks)} clusterings")
        _check(name, "embedding_size", embedding_size, isinstance(embedding_size, int) and embedding_size >= 1, ">= 1")
        _check(name, "num_samples", num_samples, num_samples is None or (isinstance(num_samples, int)
                                                                          and num_samples >= 1),
               "an int >= 1 (the training set size)")
        _check(name, "num_heads", num_heads, isinstance(num_heads, int) and num_heads >= 1, ">= 1")
        _check(name, "num_clusters", num_clusters, bool(ks) and all(isinstance(k, int) and k >= 2 for k in ks),
               "an int >= 2 or a list of them")
        _check(name, "temperature", temperature, temperature > 0, "> 0")
        _check(name, "dual_lr", dual_lr, dual_lr >= 0, ">= 0")
        _check(name, "min_size_ratio", min_size_ratio, 0 <= min_size_ratio <= 1, "in [0, 1]")
        _check(name, "init", init, init in INITS, f"one of {INITS}")
        _check(name, "center_features", center_features, isinstance(center_features, bool), "true or false")
        _check(name, "center_update", center_update, center_update in CENTER_UPDATES,
               f"{CENTER_UPDATES[0]!r} (the running mean after every batch, as the authors)")
        self.embedding_size, self.num_samples, self.num_clusters = embedding_size, num_samples, ks
        self.num_heads, self.temperature, self.dual_lr, self.min_size_ratio = len(ks), temperature, dual_lr, min_size_ratio
        self.init, self.center_features, self.seed = init, center_features, seed
        for h, k in enumerate(ks):
            g = torch.Generator().manual_seed(seed + h)
            start = F.normalize(torch.randn(k, embedding_size, generator=g), dim=1)  # the authors' init
            self.register_buffer(f"centers_{h}", start.clone())
            self.register_buffer(f"logit_centers_{h}", start.clone())
            self.register_buffer(f"duals_{h}", torch.zeros(k))
            self.register_buffer(f"counters_{h}", torch.zeros(k))
        n, s = num_samples or 0, self.memory_slots
        self.register_buffer("labels", torch.full((self.num_heads, n, s) if s > 1 else (self.num_heads, n), -1,
                                                  dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.register_buffer("epochs_done", torch.tensor(0))
        self.last_assignments: list[torch.Tensor] = []  # per head: this batch's assignments (global batch)
        self._warned_no_indices = False

    # ---------------------------------------------------------------- public state
    centers = PerHead("Running assignment centers, one [K_h, D] tensor per head.")
    logit_centers = PerHead("Centers of the logits, frozen at each epoch end, one [K_h, D] tensor per head.")
    duals = PerHead("Dual variables of the cluster-size constraint, one [K_h] tensor per head.")
    counters = PerHead("Samples assigned to each cluster so far this epoch, one [K_h] tensor per head.")

    @torch.no_grad()
    def load_centers(self, centers: list[torch.Tensor]) -> None:
        """Set the running and the logit centers of every head (a list of [K_h, D])."""
        if len(centers) != self.num_heads or any(tuple(c.shape) != tuple(mine.shape)
                                                 for c, mine in zip(centers, self.centers)):
            raise ValueError(f"load_centers takes {self.num_heads} tensors of shapes "
                             f"{[tuple(c.shape) for c in self.centers]}, got {[tuple(c.shape) for c in centers]}")
        for c, run, logit in zip(centers, self.centers, self.logit_centers):
            run.copy_(c)
            logit.copy_(c)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_clusters={self.num_clusters}, "
                f"temperature={self.temperature}, dual_lr={self.dual_lr}, min_size_ratio={self.min_size_ratio}")

    # ---------------------------------------------------------------- the authors' update rules
    def unit(self, v: torch.Tensor) -> torch.Tensor:
        """A view as unit vectors (with `center_features`, minus its batch mean first, not differentiated)."""
        v = v.float()
        if self.center_features:
            v = v - v.detach().mean(dim=0)
        return F.normalize(v, dim=1)

    def logits(self, z: torch.Tensor, h: int) -> torch.Tensor:
        return z @ self.logit_centers[h].T / self.temperature

    @torch.no_grad()
    def assign(self, feats: torch.Tensor, h: int, centers: torch.Tensor | None = None) -> torch.Tensor:
        """argmax_k (feats . c_k + rho_k) under the running centers (or `centers`) and the duals."""
        c = self.centers[h] if centers is None else centers
        return (feats.float() @ c.T + self.duals[h]).argmax(dim=1)

    @torch.no_grad()
    def update_duals_and_centers(self, feats: torch.Tensor, labels: torch.Tensor, h: int,
                                 normalize: bool = True) -> None:
        """One dual step and the running-mean center step for a (global) batch and its assignments."""
        k, duals, counters, centers = self.num_clusters[h], self.duals[h], self.counters[h], self.centers[h]
        counts = torch.bincount(labels, minlength=k).to(duals.dtype)
        duals.sub_(self.dual_lr / labels.numel() * counts).add_(self.dual_lr * self.min_size_ratio / k)
        if self.min_size_ratio < 1:
            duals.clamp_(min=0)
        hit = counts > 0
        before = counters.clone()
        counters.add_(counts)
        sums = torch.zeros_like(centers).index_add_(0, labels, feats.float())
        centers[hit] = (centers[hit] * before[hit, None] + sums[hit]) / counters[hit, None]
        if normalize:
            centers[hit] = F.normalize(centers[hit], dim=1)

    @torch.no_grad()
    def _maybe_init(self, feats: torch.Tensor) -> None:
        """init="kmeans++": centers from the first global batch (a distinct seed per head)."""
        if bool(self.initialized):
            return
        for h, k in enumerate(self.num_clusters):
            g = torch.Generator().manual_seed(self.seed + h)
            c = kmeans_plus_plus(F.normalize(feats.float(), dim=1).cpu(), k, g).to(feats.device)
            broadcast_tensor(c)
            self.centers[h].copy_(c)
            self.logit_centers[h].copy_(c)
        self.initialized.fill_(True)

    def _indices(self, indices: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Checked dataset indices on the state's device; None (older callers) with a warning once."""
        name = type(self).__name__
        if indices is None:
            if not self._warned_no_indices:
                warnings.warn(f"{name} called without dataset indices: each sample's target is its current "
                              f"assignment; pass criterion(views, indices) for the authors' label memory",
                              stacklevel=3)
                self._warned_no_indices = True
            return None
        if self.num_samples is None:
            raise ValueError(f"{name}: give num_samples (the training set size) to use the label memory")
        indices = indices.to(self.labels.device).long().view(-1)
        if indices.numel() != batch:
            raise ValueError(f"{name}: {indices.numel()} indices for a batch of {batch}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise ValueError(f"{name}: sample index {int(indices.max())} outside [0, num_samples={self.num_samples})")
        return indices

    @torch.no_grad()
    def hard_targets(self, feats: torch.Tensor, indices: torch.Tensor | None, h: int, normalize: bool = True,
                     assign_centers: torch.Tensor | None = None) -> torch.Tensor:
        """This batch's targets for head h, then the state update from the global batch.

        Epoch 0 (and no memory yet): the assignment the sample gets now; later: last epoch's label."""
        all_feats = all_gather_cat(feats)
        labels = self.assign(all_feats, h, assign_centers)
        self.last_assignments.append(labels)
        b = feats.shape[0]
        start = sum(all_gather_cat(torch.tensor([b], device=feats.device)).tolist()[:get_rank()]) if is_distributed() else 0
        mine = labels[start:start + b]
        if indices is None:
            self.update_duals_and_centers(all_feats, labels, h, normalize)
            return mine
        memory = self.labels[h] if self.labels.dim() == 2 else self.labels[h, :, 0]
        previous = memory[indices]
        targets = mine if int(self.epochs_done) == 0 else torch.where(previous >= 0, previous, mine)
        self.update_duals_and_centers(all_feats, labels, h, normalize)
        self.remember(all_gather_cat(indices), labels, h)
        return targets

    @torch.no_grad()
    def remember(self, indices: torch.Tensor, labels: torch.Tensor, h: int) -> None:
        if self.labels.dim() == 2:
            self.labels[h, indices] = labels
        else:
            self.labels[h, indices, 0] = labels

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """Freeze the running centers as the logit centers, reset the counters; returns stats to log."""
        stats = self._stats()
        for h in range(self.num_heads):
            self.logit_centers[h].copy_(self.centers[h])
            self.counters[h].zero_()
        self.epochs_done += 1
        return stats

    def _stats(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        for h, k in enumerate(self.num_clusters):
            counts = self.counters[h]
            if counts.sum() > 0:
                stats[f"coke/head{h}/min_cluster_ratio"] = float(counts.min() / counts.sum() * k)
            stats[f"coke/head{h}/dual_mean"] = float(self.duals[h].mean())
        return stats


def _predictions(views: list[torch.Tensor], predictions) -> list[torch.Tensor] | None:
    if predictions is None:
        return None
    predictions = _as_views(predictions, "predictions")
    if [tuple(p.shape[:1]) for p in predictions] != [tuple(v.shape[:1]) for v in views]:
        raise ValueError(f"CoKe: predictions {[tuple(p.shape) for p in predictions]} do not match views "
                         f"{[tuple(v.shape) for v in views]} (one per view, same batch)")
    return predictions


# ----------------------------------------------------------------------------- single view

class CoKeSingleView(_CoKe):
    """CoKe with one view: criterion([projection], indices, [prediction]); see the module docstring."""

    def __init__(self, embedding_size: int, num_samples: int, num_clusters: int | list[int] = (3000, 4000, 5000),
                 num_heads: int = 1, temperature: float = 0.1, dual_lr: float = 20.0, min_size_ratio: float = 0.4,
                 beta: float = 0.5, stage: int = 801, soft_label_size: int = 5, soft_label_temperature: float = 0.5,
                 init: str = "random", center_features: bool = False, center_update: str = "online",
                 seed: int = 0):
        name = type(self).__name__
        _check(name, "soft_label_size", soft_label_size, isinstance(soft_label_size, int) and soft_label_size >= 1,
               "an int >= 1")
        self.memory_slots = soft_label_size
        super().__init__(embedding_size, num_samples, num_clusters, num_heads, temperature, dual_lr,
                         min_size_ratio, init, center_features, center_update, seed)
        _check(name, "num_samples", num_samples, isinstance(num_samples, int), "an int >= 1 (the training set size)")
        _check(name, "beta", beta, 0 <= beta <= 1, "in [0, 1]")
        _check(name, "stage", stage, isinstance(stage, int) and stage >= 0, "an int >= 0 (epochs of stage 1)")
        _check(name, "soft_label_temperature", soft_label_temperature, soft_label_temperature > 0, "> 0")
        self.beta, self.stage = beta, stage
        self.soft_label_size, self.soft_label_temperature = soft_label_size, soft_label_temperature
        if soft_label_size > 1:
            self.register_buffer("label_weights", torch.zeros(self.num_heads, num_samples, soft_label_size))
            self.register_buffer("label_slot", torch.zeros(self.num_heads, num_samples, dtype=torch.long))

    @property
    def soft_stage(self) -> bool:
        """True once targets are soft labels (stage 2 after its first epoch, with soft_label_size > 1)."""
        return self.soft_label_size > 1 and int(self.epochs_done) > self.stage

    @torch.no_grad()
    def soft_targets(self, indices: torch.Tensor, h: int) -> torch.Tensor:
        """[B, K] soft labels: each remembered label gets exp(weight / t) (weight > 0), normalised."""
        labels, weights = self.labels[h, indices].clamp_min(0), self.label_weights[h, indices]
        out = torch.zeros(indices.numel(), self.num_clusters[h], device=weights.device).scatter_add_(1, labels, weights)
        positive = out > 0
        out[positive] = torch.exp(out[positive] / self.soft_label_temperature)
        return out / out.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def remember(self, indices: torch.Tensor, labels: torch.Tensor, h: int) -> None:
        epoch = int(self.epochs_done)
        if epoch < self.stage or self.soft_label_size == 1:
            return super().remember(indices, labels, h)
        if epoch == self.stage:  # stage 2 starts from this epoch's label with weight 1
            self.labels[h, indices, 0] = labels
            self.label_weights[h, indices, 0] = 1.0
            self.label_slot[h, indices] = 1
            return
        # later epochs: the new label takes weight 1/(epochs in stage 2), the others keep the rest in
        # proportion; a label already remembered keeps its slot, else the lightest slot is replaced
        factor = 1.0 / (epoch - self.stage + 1)
        mem, w = self.labels[h, indices], self.label_weights[h, indices]
        match = mem == labels[:, None]
        found = match.any(dim=1)
        slot = torch.where(found, match.float().argmax(dim=1), self.label_slot[h, indices])
        dropped = torch.where(found, torch.zeros_like(found, dtype=w.dtype), w.gather(1, slot[:, None]).squeeze(1))
        w.scatter_(1, slot[:, None], (w.gather(1, slot[:, None]).squeeze(1) - dropped)[:, None])
        w *= ((1.0 - factor) / (1.0 - dropped))[:, None]
        mem.scatter_(1, slot[:, None], labels[:, None])
        w.scatter_add_(1, slot[:, None], torch.full_like(dropped, factor)[:, None])
        self.labels[h, indices] = mem
        self.label_weights[h, indices] = w
        self.label_slot[h, indices] = w.argmin(dim=1)

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """Stage 1: freeze the running centers as logit centers. Stage 2: logit centers <- normalised running
        average over stage-2 epochs of the normalised running centers, and the running centers restart
        from it. Counters reset."""
        epoch = int(self.epochs_done)
        if epoch < self.stage:
            return super().end_epoch()
        stats = self._stats()
        factor = 1.0 / (epoch - self.stage + 1)
        for h in range(self.num_heads):
            logit = self.logit_centers[h]
            logit.copy_(F.normalize((1 - factor) * logit + factor * F.normalize(self.centers[h], dim=1), dim=1))
            self.centers[h].copy_(logit)
            self.counters[h].zero_()
        self.epochs_done += 1
        return stats

    def forward(self, views, indices: torch.Tensor | None = None, predictions=None) -> torch.Tensor:
        views = _as_views(views)
        if len(views) != 1:
            raise ValueError(f"coke_single_view takes one view, got {len(views)}; use coke_double_view or "
                             f"coke_multi_view")
        predictions = _predictions(views, predictions)
        z = self.unit(views[0])
        p = z if predictions is None else F.normalize(predictions[0].float(), dim=1)
        if self.training:
            if indices is None:
                raise ValueError("coke_single_view needs the samples' dataset indices: criterion(views, indices)")
            indices = self._indices(indices, z.shape[0])
            self._maybe_init(all_gather_cat(z.detach()))
        loss_pred, loss_proj, self.last_assignments = 0.0, 0.0, []
        epoch = int(self.epochs_done)
        for h in range(self.num_heads):
            logits_proj, logits_pred = self.logits(z, h), self.logits(p, h)
            if not self.training:
                target = self.assign(z.detach(), h)
            else:
                soft = self.soft_stage
                with torch.no_grad():
                    target = self.soft_targets(indices, h) if soft else None
                    late = epoch >= self.stage  # stage 2 assigns with the averaged (logit) centers, unnormalised
                    hard = self.hard_targets(z.detach(), indices, h, normalize=not late,
                                             assign_centers=self.logit_centers[h] if late else None)
                    target = hard if target is None else target
            if target.dim() == 2:
                loss_pred = loss_pred + soft_cross_entropy(logits_pred, target)
                loss_proj = loss_proj + soft_cross_entropy(logits_proj, target)
            else:
                loss_pred = loss_pred + F.cross_entropy(logits_pred, target)
                loss_proj = loss_proj + F.cross_entropy(logits_proj, target)
        return (self.beta * loss_pred + (1 - self.beta) * loss_proj) / self.num_heads


# ----------------------------------------------------------------------------- two views and multi-crop

class CoKeDoubleView(_CoKe):
    """CoKe with two views: criterion([proj1, proj2], indices, [pred1, pred2]); see the module docstring."""

    min_views, large_views = 2, 2

    def __init__(self, embedding_size: int, num_samples: int | None = None,
                 num_clusters: int | list[int] = (3000, 4000, 5000), num_heads: int = 1, temperature: float = 0.05,
                 dual_lr: float = 20.0, min_size_ratio: float = 0.4, alpha: float = 0.2, init: str = "random",
                 center_features: bool = False, center_update: str = "online", seed: int = 0):
        super().__init__(embedding_size, num_samples, num_clusters, num_heads, temperature, dual_lr,
                         min_size_ratio, init, center_features, center_update, seed)
        _check(type(self).__name__, "alpha", alpha, 0 <= alpha <= 1, "in [0, 1]")
        self.alpha = alpha

    def _views(self, views) -> list[torch.Tensor]:
        views = _as_views(views)
        if len(views) != 2:
            raise ValueError(f"coke_double_view takes 2 views, got {len(views)}; use coke_multi_view for small crops")
        return views

    def forward(self, views, indices: torch.Tensor | None = None, predictions=None) -> torch.Tensor:
        views = self._views(views)
        if views[0].shape != views[1].shape:
            raise ValueError(f"CoKe: the two large views differ in shape: {[tuple(v.shape) for v in views[:2]]}")
        predictions = _predictions(views, predictions)
        zs = [self.unit(v) for v in views]
        ps = zs if predictions is None else [F.normalize(p.float(), dim=1) for p in predictions]
        feats = ((zs[0] + zs[1]) * 0.5).detach()  # one assignment per sample
        if self.training:
            indices = self._indices(indices, feats.shape[0])
            self._maybe_init(all_gather_cat(feats))
        alpha, small = self.alpha, len(zs) - 2
        large_loss, small_loss, self.last_assignments = 0.0, 0.0, []
        for h in range(self.num_heads):
            proj = [self.logits(z, h) for z in zs]
            pred = [self.logits(p, h) for p in ps]
            with torch.no_grad():
                target = self.hard_targets(feats, indices, h) if self.training else self.assign(feats, h)
                soft = [F.softmax(proj[v].detach().float(), dim=1) for v in (0, 1)]
            for v in (0, 1):
                for logits in (pred[v], proj[v]):
                    large_loss = large_loss + alpha * F.cross_entropy(logits, target) \
                        + (1 - alpha) * soft_cross_entropy(logits, soft[1 - v])
            for v in range(2, 2 + small):
                for logits in (pred[v], proj[v]):
                    small_loss = small_loss + 2 * alpha * F.cross_entropy(logits, target) \
                        + (1 - alpha) * soft_cross_entropy(logits, soft[0] + soft[1])
        large_loss = 0.5 / (2 * self.num_heads) * large_loss
        if small == 0:
            return large_loss
        small_loss = 0.5 / (2 * small * self.num_heads) * small_loss
        return self.beta * large_loss + (1 - self.beta) * small_loss


class CoKeMultiView(CoKeDoubleView):
    """CoKe with two large views and small crops: criterion([large1, large2, small1, ...], indices,
    predictions). `num_small_crops` None takes every view after the first two."""

    def __init__(self, embedding_size: int, num_samples: int | None = None,
                 num_clusters: int | list[int] = (3000, 4000, 5000), num_heads: int = 1, temperature: float = 0.05,
                 dual_lr: float = 20.0, min_size_ratio: float = 0.4, alpha: float = 0.2, beta: float = 0.5,
                 num_small_crops: int | None = None, init: str = "random", center_features: bool = False,
                 center_update: str = "online", seed: int = 0):
        super().__init__(embedding_size, num_samples, num_clusters, num_heads, temperature, dual_lr,
                         min_size_ratio, alpha, init, center_features, center_update, seed)
        name = type(self).__name__
        _check(name, "beta", beta, 0 <= beta <= 1, "in [0, 1]")
        _check(name, "num_small_crops", num_small_crops,
               num_small_crops is None or (isinstance(num_small_crops, int) and num_small_crops >= 0),
               "an int >= 0 or null (every view after the first two)")
        self.beta, self.num_small_crops = beta, num_small_crops

    def _views(self, views) -> list[torch.Tensor]:
        views = _as_views(views)
        if len(views) < 2 or (self.num_small_crops is not None and len(views) != 2 + self.num_small_crops):
            expected = "2+" if self.num_small_crops is None else str(2 + self.num_small_crops)
            raise ValueError(f"coke_multi_view needs {expected} views (2 large, then num_small_crops="
                             f"{self.num_small_crops} small), got {len(views)}")
        if any(v.shape[0] != views[0].shape[0] for v in views):
            raise ValueError(f"coke_multi_view: views of different batch sizes {[tuple(v.shape) for v in views]}")
        return views
