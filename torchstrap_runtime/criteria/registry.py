"""Build any torch.nn loss, any pytorch-metric-learning loss, a CoKe criterion or an SSL baseline by name.

    build_criterion("CrossEntropyLoss", {"label_smoothing": 0.1})
    build_criterion("TripletMarginLoss", {"margin": 0.1}, miner="TripletMarginMiner", miner_params={"margin": 0.2})
    build_criterion("coke_multi_view", {"embedding_size": 64, "num_clusters": [10, 20]})
    build_criterion("dino", {"out_dim": 4096, "nepochs": 100})     # also simclr, vicreg, barlow_twins, byol, mocov3

Name resolution: a bare name found in only one library means that class; the only name found in both,
`TripletMarginLoss`, means the pytorch-metric-learning loss (the metric-learning use of the config);
`nn.<Name>` and `pml.<Name>` always pick the library explicitly. `AdaptiveLogSoftmaxWithLoss` (an output
layer with its own weights that returns (output, loss)) is built as `wrappers.AdaptiveSoftmaxLoss`.

Parameters are keyword arguments of the class. For pytorch-metric-learning, parameters that are objects
(`distance`, `reducer`, `embedding_regularizer`, `weight_regularizer`, `loss`, `losses`, `miner`,
`miners`, `reducers`, `default_reducer`) are given as a class name or as {"name": ..., "params": {...}};
list-valued `weight`/`pos_weight` of torch.nn losses become tensors. `params` may also be a YAML/JSON
string (handy on the command line: --criterion.params '{margin: 0.1}').

A wrong name or parameter raises `CriterionError` (a UserError and a ValueError): one sentence naming the config
key (`criterion.params`, `criterion.miner_params`, ...), what it holds and what is accepted.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from ..config import NONE_WORDS, parse_text
from ..errors import UserError
from ..methods.barlow_twins import BarlowTwinsLoss
from ..methods.byol import BYOLLoss
from ..methods.coke.criterion import CoKeDoubleView, CoKeMultiView, CoKeSingleView
from ..methods.dino import DINOLoss
from ..methods.mocov3 import MoCoV3Loss
from ..methods.simclr import SimCLRLoss
from ..methods.vicreg import VICRegLoss
from .wrappers import AdaptiveSoftmaxLoss, MetricLoss, ViewsLoss

COKE_CRITERIA: dict[str, type[nn.Module]] = {
    "coke_single_view": CoKeSingleView,
    "coke_double_view": CoKeDoubleView,
    "coke_multi_view": CoKeMultiView,
}
# The self-supervised baselines, called as criterion(student, teacher=None) (input_kind "student_teacher").
SSL_CRITERIA: dict[str, type[nn.Module]] = {
    "simclr": SimCLRLoss,
    "vicreg": VICRegLoss,
    "barlow_twins": BarlowTwinsLoss,
    "byol": BYOLLoss,
    "mocov3": MoCoV3Loss,
    "dino": DINOLoss,
}
GRAPH_CRITERIA = ("graph_laplacian",)  # graphs.training.GraphLaplacianLoss, imported when asked for
# pytorch-metric-learning classes in `losses` that are bases, not losses.
PML_BASE_CLASSES = {
    "BaseMetricLossFunction": "abstract base of the metric losses",
    "BaseLossWrapper": "abstract base of the loss wrappers",
    "GenericPairLoss": "base of the pair losses (its _compute_loss is abstract)",
}
# pml losses whose inputs are two views of the same samples, not (embeddings, labels).
PML_VIEWS_LOSSES = {"SelfSupervisedLoss", "VICRegLoss"}
# pml losses that cannot take an external miner's indices_tuple; the miner goes into the constructor.
PML_MINER_IN_CONSTRUCTOR = {"CrossBatchMemory"}
# bare names of both a torch.nn and a pml loss: they resolve to pml's (tests check the list is complete)
NAMES_IN_NN_AND_PML = frozenset({"TripletMarginLoss"})
# torch.nn layers that compute a loss but are no _Loss: built through a wrapper that returns the loss.
TORCH_LOSS_LAYERS: dict[str, type[nn.Module]] = {"AdaptiveLogSoftmaxWithLoss": AdaptiveSoftmaxLoss}


class CriterionError(UserError, ValueError):
    """A criterion name or parameter the user gave that cannot build a loss (exit 2 with its sentence)."""


# ----------------------------------------------------------------------------- name tables

def torch_losses() -> dict[str, type[nn.Module]]:
    """Every public torch.nn loss class (subclasses of torch.nn.modules.loss._Loss), and the loss layers of
    TORCH_LOSS_LAYERS as their wrappers."""
    return {**{name: cls for name, cls in vars(nn).items()
               if inspect.isclass(cls) and issubclass(cls, _Loss) and not name.startswith("_")}, **TORCH_LOSS_LAYERS}


def _pml_module(kind: str):
    import pytorch_metric_learning as pml  # imported lazily: it is slow to import
    import pytorch_metric_learning.distances  # noqa: F401
    import pytorch_metric_learning.losses  # noqa: F401
    import pytorch_metric_learning.miners  # noqa: F401
    import pytorch_metric_learning.reducers  # noqa: F401
    import pytorch_metric_learning.regularizers  # noqa: F401
    return getattr(pml, kind)


def _pml_classes(kind: str, skip: set[str] | dict = frozenset()) -> dict[str, type[nn.Module]]:
    module = _pml_module(kind)
    return {name: cls for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, nn.Module) and not name.startswith("_")
            and name not in skip}


def pml_losses() -> dict[str, type[nn.Module]]:
    """Every pytorch-metric-learning loss class (its `losses` module minus the abstract bases)."""
    return _pml_classes("losses", PML_BASE_CLASSES)


def pml_miners() -> dict[str, type[nn.Module]]:
    """Every pytorch-metric-learning miner class."""
    return _pml_classes("miners", {"BaseMiner"})


def list_criteria() -> list[str]:
    """Every name `build_criterion` accepts: bare names, `nn.`/`pml.` qualified names, CoKe and SSL names."""
    nn_names, pml_names = set(torch_losses()), set(pml_losses())
    names = nn_names | pml_names | set(COKE_CRITERIA) | set(SSL_CRITERIA) | set(GRAPH_CRITERIA)
    names |= {f"nn.{n}" for n in nn_names} | {f"pml.{n}" for n in pml_names}
    return sorted(names)


def list_miners() -> list[str]:
    """Every name accepted as `miner`."""
    return sorted(pml_miners())


def _suggest(name: str, candidates: list[str]) -> str:
    lower = {c.lower(): c for c in candidates}
    close = [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.6)]
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else "no close match"


def resolve(name: str) -> tuple[str, type[nn.Module]]:
    """(library, class) for a criterion name; library is "nn", "pml", "coke", "ssl" or "graphs"."""
    if not isinstance(name, str) or not name.strip():
        raise CriterionError(f"criterion name must be a non-empty string, got {name!r}")
    if name in COKE_CRITERIA:
        return "coke", COKE_CRITERIA[name]
    if name in SSL_CRITERIA:
        return "ssl", SSL_CRITERIA[name]
    if name in GRAPH_CRITERIA:
        from ..graphs.training import GraphLaplacianLoss

        return "graphs", GraphLaplacianLoss
    nn_table = torch_losses()
    prefix, _, bare = name.rpartition(".")
    if prefix == "nn" and bare in nn_table:
        return "nn", nn_table[bare]
    if not prefix and name in nn_table and name not in NAMES_IN_NN_AND_PML:  # no pml import (seconds)
        return "nn", nn_table[name]
    pml_table = pml_losses()
    if prefix == "pml" and bare in pml_table:
        return "pml", pml_table[bare]
    if not prefix and name in pml_table:
        return "pml", pml_table[name]
    if not prefix and name in nn_table:
        return "nn", nn_table[name]
    if name in PML_BASE_CLASSES or bare in PML_BASE_CLASSES:
        raise CriterionError(f"criterion {name!r} is not a loss: {PML_BASE_CLASSES[bare]}")
    raise CriterionError(f"unknown criterion {name!r}; {_suggest(name, list_criteria())} "
                     f"(list_criteria() lists all {len(list_criteria())} names)")


# ----------------------------------------------------------------------------- parameters

def parse_params(params: Any, what: str = "criterion.params") -> dict[str, Any]:
    """Parameters as a dict: accepts None, a dict, or a YAML/JSON mapping string."""
    if params is None or (isinstance(params, str) and params.strip().lower() in ("", *NONE_WORDS)):
        return {}
    if isinstance(params, str):
        try:
            params = parse_text(params)
        except ValueError as e:
            raise CriterionError(f"{what} is not valid YAML/JSON: {params!r} ({e})") from None
    if not isinstance(params, dict):
        raise CriterionError(f"{what} must be a mapping of keyword arguments, got {params!r}")
    bad = [k for k in params if not isinstance(k, str)]
    if bad:
        raise CriterionError(f"{what} keys must be strings, got {bad!r}")
    return dict(params)


def accepted_params(cls: type) -> list[str]:
    """Keyword parameters a class accepts, following **kwargs up its bases (as pml classes do)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                names.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break  # this __init__ does not forward unknown keywords further up
    return names


def check_params(cls: type, params: dict[str, Any], label: str | None = None,
                 params_key: str = "criterion.params") -> None:
    """Raise CriterionError naming the config key `params_key`, the parameter and the class for the first keyword
    the class does not take, with the ones it does."""
    label = label or cls.__name__
    accepted = accepted_params(cls)
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CriterionError(f"{params_key} has {key!r}, which {label} does not accept "
                                 f"(accepted: {', '.join(accepted) or 'none'}){hint}")


def instantiate(cls: type, params: dict[str, Any], label: str | None = None,
                params_key: str = "criterion.params") -> nn.Module:
    """cls(**params) with errors that name the config key `params_key`, the class and the parameter."""
    label = label or cls.__name__
    check_params(cls, params, label, params_key)
    try:
        return cls(**params)
    except TypeError as e:
        msg = str(e)
        if "missing" in msg and "required" in msg:
            missing = msg.split(":", 1)[-1].strip()
            raise CriterionError(f"{label} needs parameter(s) {missing} in {params_key}; "
                                 f"accepted: {', '.join(accepted_params(cls))}") from e
        raise CriterionError(f"{label} could not be built from {params_key} {params!r}: {msg}") from e
    except ValueError as e:   # the class's own check of a value
        raise CriterionError(f"{label} could not be built from {params_key} {params!r}: {e}") from e


PML_OBJECT_PARAMS: dict[str, str] = {
    "distance": "distances", "reducer": "reducers", "default_reducer": "reducers", "reducers": "reducers",
    "embedding_regularizer": "regularizers", "weight_regularizer": "regularizers",
    "loss": "losses", "losses": "losses", "miner": "miners", "miners": "miners",
}
PML_COLLECTION_PARAMS = {"losses", "miners", "reducers"}  # a list, or a dict {key: spec}
TENSOR_PARAMS = {"weight", "pos_weight", "ClassWeightedReducer.weights"}


def _tensorize(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key, value in params.items():
        if (key in TENSOR_PARAMS or f"{cls.__name__}.{key}" in TENSOR_PARAMS) and isinstance(value, (list, tuple)):
            out[key] = torch.tensor(value, dtype=torch.float32)
    return out


def build_pml_object(kind: str, spec: Any, what: str, params_key: str | None = None) -> nn.Module:
    """A pml distance/reducer/regularizer/loss/miner from a name, {"name", "params"}, or an object; `what` is
    its config key, `params_key` that of its parameters (default `<what>.params`)."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and "name" in spec and set(spec) <= {"name", "params"}:
        name, params = spec["name"], parse_params(spec.get("params"), params_key or f"{what}.params")
    else:
        raise CriterionError(f"{what} must be a class name or {{'name': ..., 'params': {{...}}}}, got {spec!r}")
    table = pml_losses() if kind == "losses" else _pml_classes(kind, {"BaseMiner"} if kind == "miners" else {})
    if name not in table:
        raise CriterionError(f"unknown {what} {name!r} (pytorch_metric_learning.{kind}); "
                         f"{_suggest(name, sorted(table))}")
    cls = table[name]
    return instantiate(cls, _pml_params(cls, params, params_key or f"{what}.params"), name,
                       params_key or f"{what}.params")


def _pml_params(cls: type, params: dict[str, Any], what: str) -> dict[str, Any]:
    """Turn object-valued parameters (given as names/specs) into pml objects, recursively."""
    out = _tensorize(cls, params)
    for key, value in params.items():
        kind = PML_OBJECT_PARAMS.get(key)
        if kind is None or value is None:
            continue
        sub = f"{what}.{key}"
        if key in PML_COLLECTION_PARAMS and isinstance(value, (list, tuple)):
            out[key] = [build_pml_object(kind, v, f"{sub}[{i}]") for i, v in enumerate(value)]
        elif key in PML_COLLECTION_PARAMS and isinstance(value, dict) and "name" not in value:
            out[key] = {k: build_pml_object(kind, v, f"{sub}.{k}") for k, v in value.items()}
        else:
            out[key] = build_pml_object(kind, value, sub)
    return out


# ----------------------------------------------------------------------------- entry point

def build_criterion(name: str, params: dict[str, Any] | str | None = None,
                    miner: str | None = None, miner_params: dict[str, Any] | str | None = None) -> nn.Module:
    """The loss module named `name`, built with keyword arguments `params` (and an optional pml miner).

    The returned module has `input_kind` (see wrappers.INPUT_KINDS) and `criterion_spec` (the arguments,
    for logging and round trips). torch.nn losses are returned as they are (own call signature);
    pytorch-metric-learning losses are wrapped so that criterion(embeddings, labels) works.
    """
    library, cls = resolve(name)
    params = parse_params(params)
    miner_params = parse_params(miner_params, "criterion.miner_params")
    if isinstance(miner, str) and miner.strip().lower() in ("", *NONE_WORDS):
        miner = None
    if miner is None and miner_params:
        raise CriterionError(f"criterion.miner_params {miner_params!r} given without criterion.miner")
    if miner is not None and library != "pml":
        raise CriterionError(f"criterion {name!r} does not take a miner (miners work with "
                         f"pytorch-metric-learning losses only), got miner={miner!r}")

    if library == "nn":
        criterion = instantiate(cls, _tensorize(cls, params), name)
        criterion.input_kind = _torch_input_kind(cls)
    elif library in ("coke", "ssl", "graphs"):
        criterion = instantiate(cls, params, name)
    else:
        criterion = _build_pml(name, cls, params, miner, miner_params)
    criterion.criterion_spec = {"name": name, "params": params, "miner": miner, "miner_params": miner_params}
    return criterion


def _build_pml(name: str, cls: type, params: dict[str, Any], miner: Any,
               miner_params: dict[str, Any]) -> nn.Module:
    miner_spec = None if miner is None else {"name": miner, "params": miner_params}
    if cls.__name__ in PML_VIEWS_LOSSES:
        if miner_spec is not None:
            raise CriterionError(f"criterion {name!r} compares two views and takes no miner, got miner={miner!r}")
        return ViewsLoss(instantiate(cls, _pml_params(cls, params, "criterion.params"), name))
    if cls.__name__ in PML_MINER_IN_CONSTRUCTOR and miner_spec is not None:
        if "miner" in params:
            raise CriterionError(f"criterion {name!r}: give the miner once, as criterion.miner or params.miner")
        params = {**params, "miner": miner_spec}
        miner_spec = None
    loss = instantiate(cls, _pml_params(cls, params, "criterion.params"), name)
    miner_module = None if miner_spec is None else build_pml_object("miners", miner_spec, "criterion.miner",
                                                                    "criterion.miner_params")
    return MetricLoss(loss, miner_module)


def _torch_input_kind(cls: type) -> str:
    """'logits_targets' when forward takes (input, target), else 'custom'."""
    sig = inspect.signature(cls.forward)
    required = [p for p in list(sig.parameters.values())[1:] if p.default is p.empty]
    return "logits_targets" if len(required) == 2 else "custom"


def describe(name: str) -> str:
    """`module.Class(param, ...)`: where a criterion name leads and the parameters it accepts."""
    _, cls = resolve(name)
    return f"{cls.__module__}.{cls.__name__}({', '.join(accepted_params(cls))})"



def check_input_kind(criterion: nn.Module, name: str, expected: str, examples: str) -> None:
    """Raise a UserError when `criterion` (criterion.name `name`) does not take `expected` inputs
    (one of `INPUT_KINDS`); `examples` names criteria that do."""
    kind = getattr(criterion, "input_kind", None)
    if kind != expected:
        raise UserError(f"criterion.name '{name}' takes {kind!r} inputs but this experiment calls it with "
                        f"{expected!r} (e.g. {examples})")
