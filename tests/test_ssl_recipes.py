"""The six SSL baselines as recipes of a generated ssl-multiview experiment (`--ssl.recipe NAME`):

- each trains end to end on the digits .beton through the experiment's own data.py, models.py and trainer.py
  (one short epoch): the recipe alone switches the heads, views, criterion, optimizer and lr, the momentum
  teacher follows every optimizer step, the online probe learns and is evaluated, kNN and RankMe are logged;
- each method's heads equal a transcription of its authors' builder (layers, widths, biases, BatchNorm
  placement and affinity, DINO's weight-normalised last layer) at small widths, outputs included;
- LARS equals a transcription of facebookresearch/barlowtwins' `LARS` with its two parameter groups;
- a DINO run interrupted mid-epoch resumes bitwise (weights, teacher, center, probe, optimizer).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from test_tasks import config  # noqa: F401  (the fixture: standard sections, a quiet run folder)

from torchstrap_runtime.config import set_values
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.methods.baselines import BASELINES
from torchstrap_runtime.methods.barlow_twins import BarlowTwinsProjector
from torchstrap_runtime.methods.byol import BYOLMLP
from torchstrap_runtime.methods.dino import DINOHead
from torchstrap_runtime.methods.mocov3 import MoCoV3MLP
from torchstrap_runtime.methods.simclr import SimCLRProjector
from torchstrap_runtime.methods.vicreg import VICRegProjector
from torchstrap_runtime.optim import LARS, parameter_groups

RECIPES = ["simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino"]
TEACHERS = {"byol", "mocov3", "dino"}
BATCH = 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    from torchstrap_runtime.data import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))


def recipe_trainer(task_trainer, digits: dict, recipe: str, **extra) -> type:
    """The generated experiment's Trainer class, with the recipe's settings on the digits .beton."""
    base = task_trainer("ssl-multiview")   # declares the experiment's sections first
    set_values({"data.train_path": str(digits["train"]), "data.val_path": str(digits["val"]),
                "data.batch_size": BATCH, "data.num_workers": 2, "model.name": "resnet-small", "model.num_classes": 10,
                "ssl.recipe": recipe, "ssl.head_scale": 1 / 32, "ssl.small_crops": 2, "ssl.small_size": 16,
                "ssl.warmup_epochs": 0.0, "criterion.name": "", "criterion.params": {}, "training.epochs": 1,
                "training.limit_train_batches": 3, "logging.run_id": recipe, "logging.log_every": 1, **extra})
    return base


# ------------------------------------------------------------------------------------ each recipe trains
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipe_alone_switches_heads_views_optimizer_and_trains(digits, tmp_path, task_trainer, recipe):
    trainer = recipe_trainer(task_trainer, digits, recipe)()
    baseline = BASELINES[recipe]
    authors = baseline.optimizer
    assert type(trainer.optimizer) is (LARS if authors.name == "lars" else torch.optim.AdamW)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(authors.base_lr * BATCH / 256)
    assert trainer.optimizer.param_groups[-1]["weight_decay"] == 0.0   # norms and biases: no weight decay
    assert type(trainer.criterion).__module__.endswith(f"methods.{recipe}")
    assert type(trainer.raw_model.encoder.projector).__module__.endswith(f"methods.{recipe}")
    assert (trainer.teacher is not None) == (recipe in TEACHERS)
    first = next(iter(trainer.train_loader))
    image_views = [x for x in first if torch.is_floating_point(x)]
    assert len(image_views) == (4 if recipe == "dino" else 2)   # 2 global (+ 2 local crops of 16 px)
    assert [v.shape[-1] for v in image_views] == [32, 32] + [16] * (len(image_views) - 2)
    probe = copy.deepcopy(trainer.probe.linear.state_dict())
    backbone = {k: v.clone() for k, v in trainer.raw_model.backbone.state_dict().items()}

    record = trainer.run()

    assert np.isfinite(record["train_loss"]) and 0 <= record["val_probe_top1"] <= 1
    assert 0 <= record["val_knn_top1"] <= 1 and record["val_rankme"] >= 1
    assert not torch.equal(probe["weight"], trainer.probe.linear.weight)   # the probe learned
    assert any(not torch.equal(v, trainer.raw_model.backbone.state_dict()[k]) for k, v in backbone.items())
    if recipe in TEACHERS:
        assert int(trainer.teacher.updates) == 3   # once per optimizer step
        student, teacher = trainer.raw_model.encoder.state_dict(), trainer.teacher.network.state_dict()
        assert any(not torch.equal(student[k], teacher[k]) for k in student)   # it lags behind
    epochs = [r for r in read_log(tmp_path / recipe) if r.get("kind") == "epoch"]
    assert "val_probe_top1" in epochs[-1] and "val_rankme" in epochs[-1]


def test_the_recipes_optimizer_follows_the_backbone_and_dino_schedules_weight_decay(digits, task_trainer):
    trainer = recipe_trainer(task_trainer, digits, "dino", **{"training.limit_train_batches": 4, "training.epochs": 2,
                                                              "logging.eval_each_epoch": False})()
    decays = []

    class Records(type(trainer)):
        def after_train_step(self):
            super().after_train_step()
            decays.append(self.optimizer.param_groups[0]["weight_decay"])

    Records().run()
    expected = [0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    np.testing.assert_allclose(decays, expected, rtol=1e-12)   # main_dino.py's wd_schedule, per step
    mocov3 = BASELINES["mocov3"]
    assert mocov3.optimizer.for_backbone(vit=True).name == "adamw" and mocov3.optimizer.for_backbone(False).name == "lars"
    assert mocov3.criterion_params(None, 1, vit=True)["temperature"] == 0.2
    net = mocov3.network(nn.Flatten(), 12, head_scale=1 / 64, vit=True)
    adamw = mocov3.optimizer.for_backbone(vit=True).build(net, global_batch=512)
    assert type(adamw) is torch.optim.AdamW and [g["weight_decay"] for g in adamw.param_groups] == [0.1]  # every one
    assert adamw.param_groups[0]["lr"] == pytest.approx(1.5e-4 * 2)


# ------------------------------------------------------------------------------------ views = the authors'
# per view: (crop scale, jitter (b, c, s, h), jitter p, grayscale p, blur p, solarize p or 0), as their code has them
TWO_VIEWS = {
    "simclr": [((0.08, 1.0), (0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5, 0.0)] * 2,   # SimCLR: strength 1, blur 0.5 both
    **{name: [((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 1.0, 0.0),
              ((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.1, 0.2)] for name in ("byol", "vicreg", "barlow_twins",
                                                                                   "mocov3")},
    "dino": [((0.4, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 1.0, 0.0), ((0.4, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.1, 0.2)]
    + [((0.05, 0.4), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.5, 0.0)] * 8,   # 2 global + local_crops_number 8
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_builds_its_authors_views(recipe):
    from torchstrap_runtime.data import (RandomColorJitter, RandomGaussianBlur, RandomGrayscale, RandomResizedCrop,
                                         RandomSolarization)
    from torchstrap_runtime.methods.views import build_views

    baseline = BASELINES[recipe]
    pipelines, mapper = build_views(baseline.views(224, 96, baseline.small_crops), 0, None, recipe)
    names = [n for n in pipelines if n != "label"]
    assert names[:2] == ["image", "view2"] and all(mapper[n] == "image" for n in names[1:])
    found = []
    for name in names:
        ops = {type(op): op for op in pipelines[name]}
        crop, jitter = ops[RandomResizedCrop], ops[RandomColorJitter]
        solarize = ops[RandomSolarization].p if RandomSolarization in ops else 0.0
        found.append((tuple(crop.scale), (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue), jitter.p,
                      ops[RandomGrayscale].p, ops[RandomGaussianBlur].p, solarize))
        assert crop.output_size == ((96, 96) if name.startswith("small") else (224, 224))
    assert found == TWO_VIEWS[recipe]


# ------------------------------------------------------------------------------------ heads = the authors'
def simclr_reference(in_dim, out_dim):
    """google-research/simclr tf2 ProjectionHead (3 layers): hidden Linear (BN, no bias) + BN + ReLU at the
    input width; last Linear (no bias) + BN without centre."""
    layers = []
    for _ in range(2):
        layers += [nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU()]
    last = nn.BatchNorm1d(out_dim)
    layers += [nn.Linear(in_dim, out_dim, bias=False), last]
    return nn.Sequential(*layers)


def byol_reference(in_dim, hidden, out):
    """deepmind byol networks.MLP: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, out))


def vicreg_reference(in_dim, mlp, bias=True):
    """facebookresearch/vicreg Projector (barlowtwins: every Linear without bias)."""
    f = [in_dim] + list(map(int, mlp.split("-")))
    layers = []
    for i in range(len(f) - 2):
        layers += [nn.Linear(f[i], f[i + 1], bias=bias), nn.BatchNorm1d(f[i + 1]), nn.ReLU(True)]
    layers.append(nn.Linear(f[-2], f[-1], bias=False))
    return nn.Sequential(*layers)


def mocov3_reference(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """facebookresearch/moco-v3 MoCo._build_mlp."""
    mlp = []
    for l in range(num_layers):
        dim1 = input_dim if l == 0 else mlp_dim
        dim2 = output_dim if l == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if l < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


class DINOHeadReference(nn.Module):
    """facebookresearch/dino DINOHead (use_bn False, nlayers 3), with torch's weight_norm parametrisation."""

    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x):
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1, p=2))


def structure(module: nn.Module) -> list:
    """Each leaf layer's type, parameter shapes and trainability, buffers' shapes and the BN's affinity."""
    rows = []
    for m in module.modules():
        if list(m.children()) and not isinstance(m, nn.Linear):
            continue
        rows.append((type(m).__name__, [(tuple(p.shape), p.requires_grad) for p in m.parameters()],
                     [tuple(b.shape) for b in m.buffers()]))
    return rows


@pytest.mark.parametrize("name, ours, theirs", [
    ("simclr", lambda: SimCLRProjector(24, 8), lambda: simclr_reference(24, 8)),
    ("byol projector", lambda: BYOLMLP(24, 40, 16), lambda: byol_reference(24, 40, 16)),
    ("vicreg", lambda: VICRegProjector(24, (40, 40, 40)), lambda: vicreg_reference(24, "40-40-40")),
    ("barlow_twins", lambda: BarlowTwinsProjector(24, (40, 40, 40)), lambda: vicreg_reference(24, "40-40-40", False)),
    ("mocov3 resnet projector", lambda: MoCoV3MLP(2, 24, 40, 16), lambda: mocov3_reference(2, 24, 40, 16)),
    ("mocov3 vit projector", lambda: MoCoV3MLP(3, 24, 40, 16), lambda: mocov3_reference(3, 24, 40, 16)),
    ("mocov3 predictor", lambda: MoCoV3MLP(2, 16, 40, 16, last_bn=False),
     lambda: mocov3_reference(2, 16, 40, 16, last_bn=False)),
    ("dino", lambda: DINOHead(24, 64, hidden_dim=40, bottleneck_dim=16),
     lambda: DINOHeadReference(24, 64, hidden_dim=40, bottleneck_dim=16)),
])
def test_each_head_equals_the_authors_builder(name, ours, theirs):
    torch.manual_seed(0)
    mine, reference = ours(), theirs()
    if name == "simclr":   # their last BatchNorm has no centre (offset): ours keeps its bias frozen at zero
        reference[-1].bias.requires_grad_(False)
    assert structure(mine) == structure(reference)
    mine_state, their_state = mine.state_dict(), reference.state_dict()
    assert [v.shape for v in mine_state.values()] == [v.shape for v in their_state.values()]
    reference.load_state_dict(dict(zip(their_state, mine_state.values())))   # ours into theirs, by position
    x = torch.randn(12, 16 if name == "mocov3 predictor" else 24)
    torch.testing.assert_close(mine(x), reference(x), rtol=0, atol=0)


def test_the_recipes_build_the_authors_widths():
    simclr, _ = BASELINES["simclr"].heads(2048, 1.0, False)
    assert [m.out_features for m in simclr.modules() if isinstance(m, nn.Linear)] == [2048, 2048, 128]
    projector, predictor = BASELINES["byol"].heads(2048, 1.0, False)
    assert [m.out_features for m in projector.modules() if isinstance(m, nn.Linear)] == [4096, 256]
    assert [m.out_features for m in predictor.modules() if isinstance(m, nn.Linear)] == [4096, 256]
    projector, predictor = BASELINES["mocov3"].heads(2048, 1.0, False)
    assert [m.out_features for m in projector.modules() if isinstance(m, nn.Linear)] == [4096, 256]
    assert len([m for m in BASELINES["mocov3"].heads(384, 1.0, True)[0].modules() if isinstance(m, nn.Linear)]) == 3
    head, _ = BASELINES["dino"].heads(384, 1.0, True)
    assert head.out_dim == 65536 and head.mlp[0].out_features == 2048 and head.mlp[-1].out_features == 256
    assert not head.last_layer.parametrizations.weight.original0.requires_grad   # norm_last_layer
    for name in ("vicreg", "barlow_twins"):
        projector, _ = BASELINES[name].heads(2048, 1.0, False)
        assert [m.out_features for m in projector.modules() if isinstance(m, nn.Linear)] == [8192] * 3
    assert BASELINES["vicreg"].heads(2048, 1 / 16, False)[0].out_dim == 512


# ------------------------------------------------------------------------------------ LARS = barlowtwins'
class BarlowTwinsLARS(torch.optim.Optimizer):
    """facebookresearch/barlowtwins main.py LARS, transcribed."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=False,
                 lars_adaptation_filter=False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    def exclude_bias_and_norm(self, p):
        return p.ndim == 1

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if not g['weight_decay_filter'] or not self.exclude_bias_and_norm(p):
                    dp = dp.add(p, alpha=g['weight_decay'])
                if not g['lars_adaptation_filter'] or not self.exclude_bias_and_norm(p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0., torch.where(update_norm > 0, (g['eta'] * param_norm / update_norm),
                                                                 one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def test_lars_equals_barlow_twins_lars_with_its_two_groups():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5, bias=False)).double()
    reference, start = copy.deepcopy(net), copy.deepcopy(net)
    ours = BASELINES["barlow_twins"].optimizer.build(net, global_batch=512)
    weights = [p for p in reference.parameters() if p.ndim != 1]
    biases = [p for p in reference.parameters() if p.ndim == 1]
    theirs = BarlowTwinsLARS([{"params": weights}, {"params": biases}], lr=0, weight_decay=1.5e-6,
                             weight_decay_filter=True, lars_adaptation_filter=True)
    theirs.param_groups[0]["lr"], theirs.param_groups[1]["lr"] = 0.2 * 2, 0.0048 * 2   # x batch / 256
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    x = torch.randn(16, 6, dtype=torch.float64)
    for _ in range(4):
        for model, optimizer in ((net, ours), (reference, theirs)):
            model.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
        for a, b in zip(net.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert all(not torch.equal(a, b) for a, b in zip(net.parameters(), start.parameters()))   # every one moved


def test_the_groups_match_the_authors_filter():
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 5, bias=False))
    groups = parameter_groups(net, 1e-6, exclude_norm_bias=True)
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in net.parameters() if p.ndim == 1]


# ------------------------------------------------------------------------------------ DINO resumes bitwise
def test_an_interrupted_dino_run_resumes_bitwise(digits, tmp_path, task_trainer):
    base = recipe_trainer(task_trainer, digits, "dino", **{"training.limit_train_batches": 3, "training.epochs": 2,
                                                           "logging.eval_each_epoch": False,
                                                           "logging.run_id": "straight"})
    straight = base()
    straight.run()

    class Stops(base):
        def after_train_step(self):
            super().after_train_step()
            if self.step == 4:   # mid-epoch 1 (3 steps per epoch)
                self.request_stop()

    set_values({"logging.run_id": "interrupted"})
    Stops().run()
    resumed = base()
    assert (resumed.epoch, resumed.start_batch) == (1, 2)
    resumed.run()
    for name in ("model", "teacher", "probe", "criterion"):
        a = getattr(straight, name).state_dict() if name != "model" else straight.raw_model.state_dict()
        b = getattr(resumed, name).state_dict() if name != "model" else resumed.raw_model.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), (name, key)
    assert int(resumed.teacher.updates) == 6 and not torch.equal(resumed.criterion.center,
                                                                   torch.zeros_like(resumed.criterion.center))
    for a, b in ((straight.optimizer, resumed.optimizer), (straight.probe.optimizer, resumed.probe.optimizer)):
        states_a, states_b = a.state_dict()["state"], b.state_dict()["state"]
        assert states_a.keys() == states_b.keys() and states_a
        for key in states_a:
            assert all(torch.equal(torch.as_tensor(states_a[key][k]), torch.as_tensor(states_b[key][k]))
                       for k in states_a[key])
