"""build_criterion through the config system, its error messages, and the embedding evaluation helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from torchstrap_runtime.config import config_as_dict, load_config, reset_config
from torchstrap_runtime.criteria import registry
from torchstrap_runtime.criteria import (build_criterion, describe, knn_accuracy, knn_predict, linear_probe_accuracy,
                                         list_criteria, nmi, precision_at_1)
from torchstrap_runtime.errors import USER_ERROR_EXIT, exit_on_user_error
from torchstrap_runtime.sections import declare_standard_sections


@pytest.fixture
def sections():
    reset_config()  # conftest's keep_global_config puts the previous config back afterwards
    declare_standard_sections()
    yield


def build_from_config() -> nn.Module:
    section = config_as_dict()["criterion"]
    return build_criterion(section["name"], section["params"], section["miner"], section["miner_params"])


# ----------------------------------------------------------------------------- config round trip

def test_config_file_and_cli_reach_loss_and_miner(sections, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text("criterion:\n  name: TripletMarginLoss\n  params: {margin: 0.1, swap: true}\n"
                    "  miner: TripletMarginMiner\n")
    load_config(["-C", str(path), "--criterion.miner_params", "{margin: 0.3, type_of_triplets: semihard}"])
    criterion = build_from_config()
    assert criterion.input_kind == "embeddings_labels"
    assert criterion.loss.margin == 0.1 and criterion.loss.swap is True
    assert criterion.miner.margin == 0.3 and criterion.miner.type_of_triplets == "semihard"


def test_spec_round_trips_through_json(sections, tmp_path):
    load_config(["--criterion.name", "coke_multi_view",
                 "--criterion.params", '{"embedding_size": 16, "num_clusters": [5, 7], "temperature": 0.2}'])
    first = build_from_config()
    first([torch.randn(32, 16), torch.randn(32, 16)])  # some state
    (tmp_path / "spec.json").write_text(json.dumps(first.criterion_spec))
    spec = json.loads((tmp_path / "spec.json").read_text())
    second = build_criterion(**spec)
    assert spec == first.criterion_spec and type(second) is type(first)
    assert second.num_clusters == [5, 7] and second.temperature == 0.2
    second.load_state_dict(first.state_dict())  # same buffers, same shapes
    assert torch.equal(second.centers[1], first.centers[1])


def test_default_section_builds_cross_entropy(sections):
    load_config([])
    criterion = build_from_config()
    assert type(criterion) is nn.CrossEntropyLoss and criterion.input_kind == "logits_targets"
    assert criterion(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).isfinite()


def test_params_as_yaml_string_and_none():
    assert build_criterion("CrossEntropyLoss", "{label_smoothing: 0.2}").label_smoothing == 0.2
    assert build_criterion("CrossEntropyLoss", "").label_smoothing == 0.0
    assert build_criterion("ContrastiveLoss", None, miner="none").miner is None


def test_torch_loss_keeps_its_own_signature_and_kinds():
    assert build_criterion("nn.TripletMarginLoss").input_kind == "custom"
    assert build_criterion("CosineEmbeddingLoss").input_kind == "custom"
    assert build_criterion("BCEWithLogitsLoss", {"pos_weight": [2.0]}).pos_weight.tolist() == [2.0]
    assert build_criterion("VICRegLoss").input_kind == "views"
    assert build_criterion("coke_single_view", {"embedding_size": 4, "num_samples": 8}).input_kind == "views"
    assert "margin" in describe("TripletMarginLoss")


# ----------------------------------------------------------------------------- error messages

def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError) as e:
        build_criterion("TripletMarginLos")
    assert "unknown criterion 'TripletMarginLos'" in str(e.value) and "'TripletMarginLoss'" in str(e.value)
    with pytest.raises(ValueError, match="'CrossEntropyLoss'"):
        build_criterion("crossentropyloss")
    with pytest.raises(ValueError, match="'coke_multi_view'"):
        build_criterion("coke_multiview")
    with pytest.raises(ValueError, match="non-empty string"):
        build_criterion("")


def test_wrong_parameter_names_parameter_and_loss():
    with pytest.raises(ValueError) as e:
        build_criterion("TripletMarginLoss", {"margn": 0.1})
    assert str(e.value).startswith("criterion.params has 'margn', which TripletMarginLoss does not accept "
                                   "(accepted: margin, swap, ")
    assert str(e.value).endswith("did you mean 'margin'?")
    with pytest.raises(ValueError, match="criterion.params has 'smoothing', which CrossEntropyLoss does not .*label_smo"):
        build_criterion("CrossEntropyLoss", {"smoothing": 0.1})
    with pytest.raises(ValueError, match="criterion.miner_params has 'margins', which TripletMarginMiner does not"):
        build_criterion("TripletMarginLoss", miner="TripletMarginMiner", miner_params={"margins": 0.1})


def test_missing_required_parameters_are_named():
    with pytest.raises(ValueError, match="ArcFaceLoss needs parameter\\(s\\) 'num_classes' and 'embedding_size'"):
        build_criterion("ArcFaceLoss")
    with pytest.raises(ValueError, match="coke_multi_view needs parameter\\(s\\) 'embedding_size'"):
        build_criterion("coke_multi_view")


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "MSELoss", "miner": "TripletMarginMiner"}, "does not take a miner"),
    ({"name": "VICRegLoss", "miner": "TripletMarginMiner"}, "takes no miner"),
    ({"name": "ContrastiveLoss", "miner": "TripletMarginMiners"}, "unknown criterion.miner 'TripletMarginMiners'.*'TripletMarginMiner'"),
    ({"name": "ContrastiveLoss", "miner_params": {"margin": 0.1}}, "without criterion.miner"),
    ({"name": "ContrastiveLoss", "params": [1, 2]}, "must be a mapping"),
    ({"name": "ContrastiveLoss", "params": "{margin: [0.1"}, "not valid YAML"),
    ({"name": "ContrastiveLoss", "params": {"distance": "CosineSim"}}, "unknown criterion.params.distance 'CosineSim'.*'CosineSimilarity'"),
    ({"name": "ContrastiveLoss", "params": {"distance": {"name": "LpDistance", "params": {"pp": 1}}}}, "criterion.params.distance.params has 'pp', which LpDistance does not accept.*did you mean 'p'"),
    ({"name": "SelfSupervisedLoss", "params": {"loss": {"nam": "NTXentLoss"}}}, "criterion.params.loss must be a class name"),
    ({"name": "GenericPairLoss"}, "is not a loss"),
    ({"name": "CrossBatchMemory", "params": {"loss": "ContrastiveLoss", "embedding_size": 4, "miner": "BatchHardMiner"},
      "miner": "BatchHardMiner"}, "give the miner once"),
])
def test_configuration_mistakes_are_sentences(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_criterion(**kwargs)


def test_list_criteria_names_all_build():
    names = list_criteria()
    assert names == sorted(set(names)) and len(names) > 120
    for name in ("nn.MSELoss", "pml.NTXentLoss", "MSELoss", "NTXentLoss", "coke_single_view"):
        assert name in names


def test_adaptive_log_softmax_trains_in_the_supervised_trainer(sections, tmp_path):
    """AdaptiveLogSoftmaxWithLoss is an output layer returning (output, loss): built as a loss on the model's
    features, its weights trained by the Trainer's optimizer, its log_prob scoring the classes."""
    from torchstrap_runtime.loggers import read_log
    from torchstrap_runtime.trainer import Trainer

    with pytest.raises(ValueError, match="needs parameter\\(s\\) 'in_features', 'n_classes', and 'cutoffs'"):
        build_criterion("AdaptiveLogSoftmaxWithLoss")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat(64)
    inputs = 3 * torch.randn(6, 12, generator=g)[labels] + torch.randn(len(labels), 12, generator=g)
    batches = [(inputs[i:i + 32], labels[i:i + 32]) for i in range(0, len(labels), 32)]

    class Features(Trainer):
        def initialize_model(self):
            self.model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16))  # 16 features, not 6 logits

        def initialize_train_loader(self):
            self.train_loader = batches

        def initialize_val_loader(self):
            self.val_loader = batches

    load_config(["--criterion.name", "AdaptiveLogSoftmaxWithLoss", "--criterion.params",
                 "{in_features: 16, n_classes: 6, cutoffs: [2, 4], div_value: 2.0}", "--training.epochs", "6", "--scheduler.name",
                 "none", "--logging.folder", str(tmp_path), "--logging.run_id", "adaptive", "--logging.progress",
                 "false"])
    trainer = Features()
    assert trainer.criterion.input_kind == "logits_targets"
    head = trainer.criterion.adaptive.head.weight.detach().clone()
    trainer.run()
    assert not torch.equal(head, trainer.criterion.adaptive.head.weight)  # the optimizer trains the layer
    epochs = [row for row in read_log(tmp_path / "adaptive") if row.get("kind") == "epoch"]
    losses = [row["train_loss"] for row in epochs]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert epochs[-1]["val_top1"] > 0.9, epochs[-1]  # scored on the layer's log_prob, not on the 16 features
    with torch.no_grad():
        features = trainer.model(inputs)
        assert trainer.criterion.log_prob(features).shape == (len(labels), 6)
        accuracy = (trainer.criterion.predict(features) == labels).float().mean()
        assert accuracy > 0.9, (accuracy, losses)


# ----------------------------------------------------------------------------- evaluation helpers

@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x, y = data.data[order].astype(np.float32), data.target[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_knn_accuracy_matches_scikit_learn(digits):
    x_train, y_train, x_test, y_test = digits
    ours = knn_predict(x_train, y_train, x_test, k=5).numpy()
    reference = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(x_train, y_train)
    theirs = reference.predict(x_test)
    assert (ours == theirs).mean() >= 0.99  # equal up to ties between equally distant neighbours
    acc = knn_accuracy(torch.tensor(x_train), torch.tensor(y_train), x_test, y_test, k=5)
    assert acc == pytest.approx(float((ours == y_test).mean())) and acc > 0.95
    with pytest.raises(ValueError, match="k=2000"):
        knn_accuracy(x_train, y_train, x_test, y_test, k=2000)
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(x_train, y_train[:10], x_test, y_test)


def test_precision_at_1_leaves_the_sample_out(digits):
    x, y = digits[0][:300], digits[1][:300]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = float((y[sims.argmax(1)] == y).mean())
    assert precision_at_1(x, y, chunk=64) == pytest.approx(expected)
    # duplicated points: each one's nearest other sample is its copy, so P@1 = 1 whatever the labels' layout
    twins = np.concatenate([x[:50], x[:50]])
    assert precision_at_1(twins, np.concatenate([y[:50], y[:50]])) == 1.0


def test_nmi_and_linear_probe(digits):
    x_train, y_train, x_test, y_test = digits
    assert nmi(y_test, (y_test + 3) % 10) == pytest.approx(1.0)
    noisy = np.where(np.arange(len(y_test)) % 3 == 0, 0, y_test)
    assert nmi(torch.tensor(y_test), noisy) == pytest.approx(normalized_mutual_info_score(y_test, noisy))
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.9


def test_a_torch_loss_resolves_without_importing_pytorch_metric_learning():
    """A bare torch.nn name (the default CrossEntropyLoss) is resolved without pml's seconds-long import, and the
    names both libraries define are exactly NAMES_IN_NN_AND_PML (which resolve to pml's class)."""
    import subprocess
    import sys

    code = ("import sys; from torchstrap_runtime.criteria.registry import resolve; "
            "print(resolve('CrossEntropyLoss')[0], 'pytorch_metric_learning' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["nn", "False"], done.stdout + done.stderr
    assert set(registry.torch_losses()) & set(registry.pml_losses()) == registry.NAMES_IN_NN_AND_PML
    assert all(registry.resolve(name)[0] == "pml" for name in registry.NAMES_IN_NN_AND_PML)


@pytest.mark.parametrize("name, params, sentence", [
    ("MultiSimilarityLoss", {"margin": 0.1},   # the metric-learning default's params with another pml loss
     "criterion.params has 'margin', which MultiSimilarityLoss does not accept (accepted: alpha, beta, base, "
     "mat_based_loss, embedding_regularizer, embedding_reg_weight, reducer, distance, collect_stats)"),
    ("MSELoss", {"margin": 0.1},
     "criterion.params has 'margin', which MSELoss does not accept (accepted: size_average, reduce, reduction)"),
])
def test_a_parameter_the_loss_does_not_take_exits_with_one_sentence(capsys, name, params, sentence):
    """Any torch.nn / pytorch-metric-learning loss given a keyword it does not take: `error: <sentence>`, exit 2,
    no traceback, as an experiment's entry point (exit_on_user_error) prints it."""
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda argv: build_criterion(name, params), argv=[])
    assert stopped.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err == f"error: {sentence}\n"
