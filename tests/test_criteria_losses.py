"""Every torch.nn loss, every pytorch-metric-learning loss and miner: built by name, finite loss, gradients.

The class lists are enumerated from the libraries here (independently of the registry); the tables below
only describe the inputs (and required constructor arguments) of the classes whose call is not the default.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.modules.loss import _Loss

import pytorch_metric_learning.losses as pml_losses
import pytorch_metric_learning.miners as pml_miners
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper
from pytorch_metric_learning.miners import BaseMiner
from torchstrap_runtime.criteria import INPUT_KINDS, build_criterion, list_criteria, list_miners

B, C, D = 24, 4, 8  # batch (6 samples per class, a multiple of 3 for packaged triplets), classes, embedding size


def enumerate_torch_losses() -> list[str]:
    return sorted(n for n, c in vars(nn).items() if inspect.isclass(c) and issubclass(c, _Loss) and not n.startswith("_"))


def enumerate_pml_losses() -> list[str]:
    bases = (BaseMetricLossFunction, BaseLossWrapper, pml_losses.MultipleLosses)
    return sorted(n for n, c in vars(pml_losses).items() if inspect.isclass(c) and issubclass(c, bases))


def enumerate_pml_miners() -> list[str]:
    return sorted(n for n, c in vars(pml_miners).items()
                  if inspect.isclass(c) and issubclass(c, BaseMiner) and c is not BaseMiner)


# Classes enumerated above that are abstract bases, not losses: building them must fail with a clear error.
NOT_LOSSES = {
    "BaseMetricLossFunction": "abstract base",
    "BaseLossWrapper": "abstract base",
    "GenericPairLoss": "base of the pair losses, _compute_loss is abstract",
}


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen()).requires_grad_()


def class_targets() -> torch.Tensor:
    return torch.arange(B) % C


def sign_targets() -> torch.Tensor:
    return (torch.arange(B) % 2) * 2 - 1.0


def ctc_inputs() -> tuple:
    t, s = 12, 4
    log_probs = x(t, B, C + 1)
    targets = torch.randint(1, C + 1, (B, s), generator=gen())
    return (log_probs.log_softmax(2), targets, torch.full((B,), t), torch.full((B,), s))


def multilabel_margin_targets() -> torch.Tensor:
    target = torch.full((B, C), -1, dtype=torch.long)
    target[:, 0] = class_targets()
    return target


# name -> (constructor params, inputs); a leaf tensor with requires_grad is checked for finite gradients.
TORCH_INPUTS: dict[str, tuple[dict, Callable[[], tuple]]] = {
    "BCELoss": ({}, lambda: (x(B, C).sigmoid(), torch.rand(B, C, generator=gen()))),
    "BCEWithLogitsLoss": ({"pos_weight": [1.0, 2.0, 1.0, 0.5]}, lambda: (x(B, C), torch.rand(B, C, generator=gen()))),
    "CTCLoss": ({}, ctc_inputs),
    "CosineEmbeddingLoss": ({}, lambda: (x(B, D), x(B, D), sign_targets())),
    "CrossEntropyLoss": ({"label_smoothing": 0.1}, lambda: (x(B, C), class_targets())),
    "GaussianNLLLoss": ({}, lambda: (x(B, C), torch.randn(B, C), torch.rand(B, C) + 0.1)),
    "HingeEmbeddingLoss": ({}, lambda: (x(B, C), sign_targets()[:, None].expand(B, C))),
    "KLDivLoss": ({"reduction": "batchmean"}, lambda: (x(B, C).log_softmax(1), torch.rand(B, C).softmax(1))),
    "LinearCrossEntropyLoss": ({"in_features": D, "num_classes": C}, lambda: (x(B, D), class_targets())),
    "MarginRankingLoss": ({}, lambda: (x(B), x(B), sign_targets())),
    "MultiLabelMarginLoss": ({}, lambda: (x(B, C), multilabel_margin_targets())),
    "MultiLabelSoftMarginLoss": ({"weight": [1.0, 1.0, 2.0, 2.0]},
                                 lambda: (x(B, C), (torch.rand(B, C, generator=gen()) > 0.5).float())),
    "MultiMarginLoss": ({}, lambda: (x(B, C), class_targets())),
    "NLLLoss": ({"weight": [1.0, 2.0, 1.0, 1.0]}, lambda: (x(B, C).log_softmax(1), class_targets())),
    "NLLLoss2d": ({}, lambda: (x(B, C, 3, 3).log_softmax(1), torch.randint(0, C, (B, 3, 3), generator=gen()))),
    "PoissonNLLLoss": ({}, lambda: (x(B, C), torch.poisson(torch.ones(B, C)))),
    "SoftMarginLoss": ({}, lambda: (x(B, C), sign_targets()[:, None].expand(B, C))),
    "TripletMarginLoss": ({"margin": 0.5}, lambda: (x(B, D), x(B, D), x(B, D))),
    "TripletMarginWithDistanceLoss": ({"margin": 0.5}, lambda: (x(B, D), x(B, D), x(B, D))),
}
TORCH_DEFAULT = ({}, lambda: (x(B, C), torch.randn(B, C)))  # regression: L1, MSE, Huber, SmoothL1, ...

PROXY = {"num_classes": C, "embedding_size": D}  # losses with learned class proxies / weights
PML_PARAMS: dict[str, dict] = {
    "ArcFaceLoss": PROXY, "CosFaceLoss": PROXY, "LargeMarginSoftmaxLoss": PROXY, "NormalizedSoftmaxLoss": PROXY,
    "ProxyAnchorLoss": PROXY, "ProxyNCALoss": PROXY, "SoftTripleLoss": {**PROXY, "centers_per_class": 2},
    "SphereFaceLoss": PROXY, "SubCenterArcFaceLoss": PROXY,
    "P2SGradLoss": {"descriptors_dim": D, "num_classes": C},
    "ManifoldLoss": {"l": D, "K": 4},
    "RankedListLoss": {"margin": 0.4, "Tn": 1.0},
    "HistogramLoss": {"n_bins": 10},
    "MarginLoss": {"num_classes": C, "learn_beta": True},
    "CrossBatchMemory": {"loss": {"name": "ContrastiveLoss", "params": {"neg_margin": 0.8}},
                         "embedding_size": D, "memory_size": 48},
    "MultipleLosses": {"losses": ["ContrastiveLoss", {"name": "TripletMarginLoss", "params": {"margin": 0.1}}],
                       "weights": [1.0, 0.5]},
    "SelfSupervisedLoss": {"loss": "NTXentLoss"},
    "VICRegLoss": {},
}
PML_NO_LABELS = {"ManifoldLoss"}  # "labels_not_supported": embeddings only


def pml_call(name: str, criterion: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    emb = x(B, D)
    if criterion.input_kind == "views":
        ref = torch.randn(B, D, generator=torch.Generator().manual_seed(1)).requires_grad_()
        return criterion([emb, ref]), [emb, ref]
    if name in PML_NO_LABELS:
        return criterion(emb), [emb]
    return criterion(emb, class_targets()), [emb]


def check_finite(loss: torch.Tensor, leaves: list[torch.Tensor], name: str) -> None:
    assert loss.dim() == 0, f"{name}: loss is not a scalar, shape {tuple(loss.shape)}"
    assert math.isfinite(float(loss)), f"{name}: loss {float(loss)}"
    loss.backward()
    grads = [t.grad for t in leaves if t.grad is not None]
    assert grads, f"{name}: no gradient reached the inputs"
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradient"


def test_enumerations_are_complete():
    names = set(list_criteria())
    assert len(enumerate_torch_losses()) >= 20 and len(enumerate_pml_losses()) >= 35
    for n in enumerate_torch_losses():
        assert n in names and f"nn.{n}" in names, n
    for n in set(enumerate_pml_losses()) - set(NOT_LOSSES):
        assert n in names and f"pml.{n}" in names, n
    assert {"coke_single_view", "coke_multi_view"} <= names
    assert set(list_miners()) == set(enumerate_pml_miners())


@pytest.mark.parametrize("name", enumerate_torch_losses())
def test_every_torch_loss(name: str):
    params, inputs = TORCH_INPUTS.get(name, TORCH_DEFAULT)
    criterion = build_criterion(f"nn.{name}", params)
    assert isinstance(criterion, getattr(nn, name))
    assert criterion.input_kind in INPUT_KINDS
    args = inputs()
    assert criterion.input_kind == ("logits_targets" if len(args) == 2 else "custom")
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad]
    if not leaves:  # inputs built from a leaf through an op (sigmoid, log_softmax): track the non-leaf
        args[0].retain_grad()
        leaves = [args[0]]
    check_finite(criterion(*args), leaves, name)


@pytest.mark.parametrize("name", enumerate_pml_losses())
def test_every_pml_loss(name: str):
    if name in NOT_LOSSES:
        with pytest.raises(ValueError, match="not a loss"):
            build_criterion(name)
        return
    criterion = build_criterion(f"pml.{name}", PML_PARAMS.get(name, {}))
    assert isinstance(criterion.loss, getattr(pml_losses, name))
    assert criterion.input_kind in ("embeddings_labels", "views")
    loss, leaves = pml_call(name, criterion)
    check_finite(loss, leaves, name)
    params = list(criterion.parameters())  # proxies / class weights must reach the optimizer
    if "num_classes" in PML_PARAMS.get(name, {}) and name != "MarginLoss":
        assert params and all(p.grad is not None for p in params), f"{name}: learned weights got no gradient"


@pytest.mark.parametrize("miner", enumerate_pml_miners())
def test_every_pml_miner(miner: str):
    criterion = build_criterion("ContrastiveLoss", miner=miner)
    emb = x(B, D)
    check_finite(criterion(emb, class_targets()), [emb], f"ContrastiveLoss+{miner}")


def test_miner_changes_the_loss():
    emb, labels = x(B, D), class_targets()
    plain = build_criterion("TripletMarginLoss", {"margin": 0.1})(emb, labels)
    mined = build_criterion("TripletMarginLoss", {"margin": 0.1}, miner="TripletMarginMiner",
                            miner_params={"margin": 0.1, "type_of_triplets": "hard"})(emb, labels)
    assert float(plain) != pytest.approx(float(mined))


def test_cross_batch_memory_takes_the_miner_in_its_constructor():
    criterion = build_criterion("CrossBatchMemory", {"loss": "ContrastiveLoss", "embedding_size": D},
                                miner="MultiSimilarityMiner")
    assert criterion.miner is None and type(criterion.loss.miner).__name__ == "MultiSimilarityMiner"
    emb = x(B, D)
    check_finite(criterion(emb, class_targets()), [emb], "CrossBatchMemory+miner")


def test_bare_names_and_collisions():
    assert type(build_criterion("TripletMarginLoss").loss) is pml_losses.TripletMarginLoss
    assert type(build_criterion("nn.TripletMarginLoss")) is nn.TripletMarginLoss
    assert type(build_criterion("MSELoss")) is nn.MSELoss
    assert type(build_criterion("NTXentLoss").loss) is pml_losses.NTXentLoss


def test_views_loss_averages_pairs_of_three_views():
    criterion = build_criterion("SelfSupervisedLoss", {"loss": "NTXentLoss"})
    views = [x(B, D), x(B, D) + 0.1, x(B, D) - 0.1]
    pair = build_criterion("SelfSupervisedLoss", {"loss": "NTXentLoss"})
    expected = (pair([views[0], views[1]]) + pair([views[0], views[2]]) + pair([views[1], views[2]])) / 3
    assert float(criterion(views)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 views"):
        criterion(views[0])


def test_nested_objects_from_config():
    criterion = build_criterion("TripletMarginLoss", {
        "distance": {"name": "CosineSimilarity"}, "margin": 0.2,
        "reducer": {"name": "ThresholdReducer", "params": {"low": 0.0}},
        "embedding_regularizer": "LpRegularizer", "embedding_reg_weight": 0.1})
    assert type(criterion.loss.distance).__name__ == "CosineSimilarity"
    built = {type(m).__name__ for m in criterion.modules()}
    assert {"ThresholdReducer", "LpRegularizer"} <= built
    emb = x(B, D)
    check_finite(criterion(emb, class_targets()), [emb], "TripletMarginLoss(nested)")


def test_multiple_losses_as_a_dict_with_per_loss_miners():
    criterion = build_criterion("MultipleLosses", {
        "losses": {"pairs": "ContrastiveLoss", "triplets": {"name": "TripletMarginLoss", "params": {"margin": 0.1}}},
        "miners": {"triplets": "TripletMarginMiner"}, "weights": {"pairs": 1.0, "triplets": 2.0}})
    assert set(criterion.loss.losses) == {"pairs", "triplets"}
    assert type(criterion.loss.miners["triplets"]).__name__ == "TripletMarginMiner"
    emb = x(B, D)
    check_finite(criterion(emb, class_targets()), [emb], "MultipleLosses(dict)")
