"""Trainers for the template's embedding tasks: `metric-learning` and `ssl-multiview`.

Each subclasses `Trainer` and overrides only what differs from supervised classification:

- `MetricLearningTrainer`: the model outputs L2-normalised embeddings; the criterion is a
  pytorch-metric-learning loss (`criterion(embeddings, labels)`, the base `train_step` as it is);
  evaluation logs `val_loss`, `val_precision_at_1` (leave-one-out on the validation set) and
  `val_knn_top1` (validation embeddings voted by their k nearest training embeddings), with
  `val_top1 = val_knn_top1` so that summaries and curves read the same as a supervised run.
- `SSLMultiViewTrainer`: batches are (view 1, label, view 2, ...[, index]); the model runs once per
  resolution of views; the criterion (CoKe by default) gets the projections, the dataset indices and the
  predictions, labels are never used for training; CoKe's `end_epoch()` runs after each training epoch;
  evaluation is the kNN accuracy of the backbone's features (`val_knn_top1`, `val_top1`).

Both need the kNN reference set: the validation loader is a `KNNValLoader(val, bank)`, where `bank` is
a plain (non-augmented) loader over the training .beton. Embeddings used for evaluation are
`self.test_time_augmentation(inputs)` (metric learning: the model's output; SSL: the backbone's features).
The number of voting neighbours is `evaluation.knn_k`, a section the experiment's config.py declares.
These are the defaults a plain subclass runs; a generated experiment's `trainer.py` carries the same
`train_step`, `eval_step` and `after_eval_epoch` bodies, to edit there.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import param
from .criteria import knn_accuracy, precision_at_1
from .criteria.coke import CoKeSingleView, first_epoch_lr_factor
from .distributed import all_reduce_sums, drop_padding, gather_rows
from .models import forward_by_resolution
from .trainer import Trainer


class EmbeddingNet(nn.Module):
    """A backbone (a model built with `num_classes=0`, exposing `out_features`) and a projection head
    to `embedding_dim`, L2-normalised. `hidden > 0` makes the head Linear-BN-ReLU-Linear (SSL style)."""

    def __init__(self, backbone: nn.Module, embedding_dim: int = 64, hidden: int = 0):
        super().__init__()
        width = getattr(backbone, "out_features", None)
        if not isinstance(width, int):
            raise ValueError(f"EmbeddingNet: the backbone {type(backbone).__name__} needs an int `out_features` "
                             f"(the size of its output), got {width!r}")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"EmbeddingNet: embedding_dim must be an int >= 1, got {embedding_dim!r}")
        self.backbone = backbone
        self.embedding_dim = embedding_dim
        if hidden > 0:
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, embedding_dim))
        else:
            self.head = nn.Linear(width, embedding_dim)

    def forward(self, x):
        """Unit embeddings of a batch; of a list of views, one [B, embedding_dim] per view (the backbone runs
        once per resolution)."""
        if isinstance(x, torch.Tensor):
            return F.normalize(self.head(self.backbone(x)), dim=1)
        return [F.normalize(self.head(f), dim=1) for f in forward_by_resolution(self.backbone, list(x))]


class KNNValLoader:
    """The validation loader (iterated by the eval loop) and `bank`: a plain loader over the training set
    whose embeddings are the kNN reference of evaluation."""

    def __init__(self, val: Iterable, bank: Iterable):
        self.val, self.bank = val, bank

    def __iter__(self) -> Iterator:
        return iter(self.val)

    def __len__(self) -> int:
        return len(self.val)

    def __getattr__(self, name: str) -> Any:
        if name in ("val", "bank"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.val, name)  # the rest is the validation loader's (e.g. its padding, `drop_padding`)


class EmbeddingTrainer(Trainer):
    """What both embedding tasks share: evaluation by embeddings and a kNN vote over the training set."""

    expected_input_kind = "embeddings_labels"   # what the criterion must take (criteria.INPUT_KINDS)
    example_criterion = "TripletMarginLoss"

    @param("criterion.name")
    @param("criterion.params")
    @param("criterion.miner")
    @param("criterion.miner_params")
    def initialize_criterion(self, name: str, params: dict, miner: str, miner_params: dict) -> None:
        """The criterion section's loss; it must take this task's inputs (see `criteria.INPUT_KINDS`)."""
        super().initialize_criterion(name, params, miner, miner_params)
        self.check_criterion(self.criterion, name)

    def check_criterion(self, criterion: nn.Module, name: str) -> None:
        """Raise a clear error when `criterion` (criterion.name `name`) does not take this task's inputs."""
        kind = getattr(criterion, "input_kind", None)
        if kind != self.expected_input_kind:
            raise ValueError(f"criterion.name '{name}' takes {kind!r} inputs but {type(self).__name__} calls it "
                             f"with {self.expected_input_kind!r} (e.g. {self.example_criterion})")

    def before_eval_epoch(self) -> None:
        """Empty the lists of validation embeddings and labels."""
        self.val_embeddings: list[torch.Tensor] = []
        self.val_labels: list[torch.Tensor] = []
        self.val_sums = {"loss": 0.0, "count": 0}

    def eval_step(self) -> None:
        """Keep the batch's evaluation embeddings (`test_time_augmentation`) and labels."""
        inputs, labels = self.to_device(self.data)
        with self.autocast():
            embeddings = self.test_time_augmentation(inputs).float()
        self.val_embeddings.append(embeddings.cpu())
        self.val_labels.append(labels.cpu())
        n = labels.shape[0]
        self.val_sums["count"] += n

    @param("evaluation.knn_k")
    def after_eval_epoch(self, knn_k: int) -> None:
        """kNN accuracy of the validation embeddings against the training set's: `val_knn_top1` and `val_top1`."""
        embeddings, labels = self.validation_embeddings()
        bank_embeddings, bank_labels = self.bank_embeddings()
        knn = knn_accuracy(bank_embeddings, bank_labels, embeddings, labels, k=min(knn_k, len(bank_labels)))
        metrics = {"val_knn_top1": knn, "val_top1": knn}
        self.epoch_record.update(metrics)

    def validation_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings and labels `eval_step` kept, from all ranks."""
        return gather_rows(torch.cat(self.val_embeddings)), gather_rows(torch.cat(self.val_labels))

    @torch.no_grad()
    def bank_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation embeddings and labels of the whole training set (the kNN reference), from all ranks."""
        bank = getattr(self.val_loader, "bank", None)
        if bank is None:
            raise TypeError(f"{type(self).__name__} needs self.val_loader to be a KNNValLoader(val, bank) "
                            f"(data.py's val_loader builds it), got {type(self.val_loader).__name__}")
        embeddings, labels = [], []
        for batch in bank:
            inputs, targets = self.to_device(drop_padding(bank, *batch))
            with self.autocast():
                embeddings.append(self.test_time_augmentation(inputs).float().cpu())
            labels.append(targets.cpu())
        return gather_rows(torch.cat(embeddings)), gather_rows(torch.cat(labels))


class MetricLearningTrainer(EmbeddingTrainer):
    """Metric learning: a pytorch-metric-learning loss on L2-normalised embeddings, scored by
    precision@1 and kNN accuracy (`val_precision_at_1`, `val_knn_top1`, `val_top1`)."""

    example_criterion = "TripletMarginLoss, ContrastiveLoss, MultiSimilarityLoss"

    def eval_step(self) -> None:
        """Keep the batch's embeddings and labels; add the criterion's loss on the batch to `self.val_sums`."""
        super().eval_step()
        embeddings, labels = self.val_embeddings[-1].to(self.device), self.val_labels[-1].to(self.device)
        self.val_sums["loss"] += float(self.criterion(embeddings, labels)) * labels.shape[0]

    @param("evaluation.knn_k")
    def after_eval_epoch(self, knn_k: int) -> None:
        """val_loss, kNN accuracy (`val_knn_top1`, `val_top1`) and leave-one-out `val_precision_at_1`."""
        embeddings, labels = self.validation_embeddings()
        bank_embeddings, bank_labels = self.bank_embeddings()
        knn = knn_accuracy(bank_embeddings, bank_labels, embeddings, labels, k=min(knn_k, len(bank_labels)))
        sums = all_reduce_sums(self.val_sums, self.device)
        metrics = {"val_loss": sums["loss"] / max(1, sums["count"]), "val_knn_top1": knn, "val_top1": knn,
                   "val_precision_at_1": precision_at_1(embeddings, labels)}
        self.epoch_record.update(metrics)


class SSLMultiViewTrainer(EmbeddingTrainer):
    """Self-supervised learning from augmented views of each sample (CoKe by default), scored by the kNN
    accuracy of the backbone's features. Batches: (view 1, label, view 2, ...[, index]); a last integer
    element is the samples' dataset indices (the loader's 'index' output, see SampleIndexDecoder).

    The model takes the list of views (the backbone runs once per resolution) and returns one embedding
    per view, or (projections, predictions) as `CoKeHeads` does; the criterion gets
    `criterion(projections, indices, predictions)` when it takes indices (CoKe), else `criterion(embeddings)`.
    A CoKe criterion without `num_samples` gets the training set's size. `recipe` (a `COKE_RECIPES` entry,
    or None) makes epoch 0 train with lr 0 when the recipe says so (`first_epoch_lr_factor`).
    """

    expected_input_kind = "views"
    example_criterion = "coke_multi_view, SelfSupervisedLoss, VICRegLoss"
    recipe: dict | None = None

    @param("criterion.name")
    @param("criterion.params")
    @param("criterion.miner")
    @param("criterion.miner_params")
    def initialize_criterion(self, name: str, params: dict, miner: str, miner_params: dict) -> None:
        """The criterion section's loss on views; CoKe's `num_samples` defaults to the training set's size."""
        params = dict(params or {})
        if name.startswith("coke_") and params.get("num_samples") is None:
            params["num_samples"] = self.num_training_samples()
        super().initialize_criterion(name, params, miner, miner_params)

    def num_training_samples(self) -> int:
        """Samples in the training .beton (its largest dataset index + 1, whatever subset the loader reads):
        the train loader's, else the kNN bank's (eval only)."""
        loader = getattr(self, "train_loader", None) or getattr(self.val_loader, "bank", None)
        reader = getattr(loader, "reader", None)
        if reader is not None:
            return int(reader.num_samples)
        return sum(len(batch[1]) for batch in loader)  # an in-memory list of batches

    def check_criterion(self, criterion: nn.Module, name: str) -> None:
        """A loss on views; CoKe's `embedding_size` must be the model's output size."""
        super().check_criterion(criterion, name)
        size, out = getattr(criterion, "embedding_size", None), getattr(self.raw_model, "embedding_dim", None)
        if size is not None and out is not None and size != out:
            raise ValueError(f"criterion.params.embedding_size is {size} but the model outputs {out} numbers "
                             f"(model.embedding_dim): make them equal")

    def split_batch(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The batch's image views on the device (element 0, then 2, 3, ...; element 1 is the label) and the
        samples' dataset indices (a last integer element) or None."""
        batch = list(self.data)
        indices = None
        if len(batch) > 2 and not torch.is_floating_point(batch[-1]):
            indices = batch.pop().reshape(-1).to(self.device, non_blocking=True)
        needed = 1 if isinstance(self.criterion, CoKeSingleView) else 2
        views = [batch[0], *batch[2:]]
        if len(views) < needed:
            raise ValueError(f"{type(self).__name__} needs batches (view 1, label, view 2, ...), got {len(batch)} "
                             f"tensors: build the train loader with custom_field_mapper={{'view2': 'image'}}")
        views = [v.to(self.device, non_blocking=True) for v in views]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views, indices

    def views(self) -> list[torch.Tensor]:
        """The batch's image views on the device."""
        return self.split_batch()[0]

    def takes_indices(self) -> bool:
        """True when the criterion takes (views, indices, predictions) (CoKe), not the views alone."""
        return "indices" in inspect.signature(self.criterion.forward).parameters

    def train_step(self) -> torch.Tensor:
        """The model on the list of views (one forward per resolution), then the criterion."""
        views, indices = self.split_batch()
        with self.autocast():
            outputs = self.model(views)
            projections, predictions = outputs if isinstance(outputs, tuple) else (outputs, None)
            if self.takes_indices():
                loss = self.criterion(projections, indices, predictions)
            else:
                loss = self.criterion(projections)
        return loss

    def before_train_step(self) -> None:
        """The recipe's pure clustering first epoch: every step of epoch 0 runs with lr 0 (the centers,
        duals and label memory still update)."""
        super().before_train_step()
        factor = 1.0 if self.recipe is None else first_epoch_lr_factor(self.recipe, self.epoch)
        self.scheduled_lrs = None
        if factor != 1.0:
            self.scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] *= factor

    def after_train_step(self) -> None:
        """Log the step, then give back the lrs that `before_train_step` scaled (unless the scheduler has set
        new ones)."""
        super().after_train_step()
        if getattr(self, "scheduled_lrs", None) is not None:
            for group, lr in zip(self.optimizer.param_groups, self.scheduled_lrs):
                if group["lr"] == 0.0:
                    group["lr"] = lr

    def after_train_epoch(self) -> None:
        """Mean training loss and lr, then the criterion's end of epoch (CoKe: new centers) and its stats."""
        super().after_train_epoch()
        end_epoch = getattr(self.criterion, "end_epoch", None)
        if callable(end_epoch):
            self.epoch_record.update(end_epoch())

    def test_time_augmentation(self, inputs: torch.Tensor) -> torch.Tensor:
        """Evaluation embeddings: the backbone's features (before the projection head) when there is one."""
        backbone = getattr(self.raw_model, "backbone", None)
        return backbone(inputs) if backbone is not None else self.model(inputs)

