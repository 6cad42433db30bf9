"""optim.py: parameter groups by layer type, LARS against a numpy transcription, the lr curve of every schedule
(warm-up, min_lr) as the Trainer steps it, scheduler state round trips, and the config path end to end."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.distributed import convert_sync_batchnorm
from torchstrap_runtime.errors import USER_ERROR_EXIT, exit_on_user_error
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.optim import (LARS, PER_EPOCH_SCHEDULERS, build_optimizer, build_scheduler,
                                      parameter_groups)
from torchstrap_runtime.trainer import Trainer


# ---------------------------------------------------------------------- parameter groups
class Zoo(nn.Module):
    """One of each layer kind whose parameters the no-decay rule must sort."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)                       # weight: decay, bias: no decay
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.ln = nn.LayerNorm(4)
        self.rms = nn.RMSNorm(4)
        self.attention = nn.MultiheadAttention(4, 2)         # in_proj_weight, out_proj.weight: decay
        self.head = nn.Linear(4, 2)
        self.nobias = nn.Linear(4, 4, bias=False)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def names(model: nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_parameter_groups_split_norm_layers_and_biases_from_weights():
    model = Zoo()
    [single] = parameter_groups(model, 5e-4)
    assert single["weight_decay"] == 5e-4 and len(single["params"]) == len(list(model.parameters())) - 2

    decay, no_decay = parameter_groups(model, 5e-4, exclude_norm_bias=True)
    assert names(model, decay["params"]) == {"conv.weight", "attention.in_proj_weight", "attention.out_proj.weight",
                                             "head.weight", "nobias.weight"}
    assert names(model, no_decay["params"]) == {
        "conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "inorm.weight", "inorm.bias", "ln.weight",
        "ln.bias", "rms.weight", "attention.in_proj_bias", "attention.out_proj.bias", "head.bias"}
    assert decay["weight_decay"] == 5e-4 and not decay.get("lars_exclude")
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True


def test_parameter_groups_keep_the_rule_for_cpu_syncbn_and_leave_out_empty_groups():
    model = convert_sync_batchnorm(nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4)))
    decay, no_decay = parameter_groups(model, 0.1, exclude_norm_bias=True)
    assert names(model, decay["params"]) == {"0.weight"} and names(model, no_decay["params"]) == {"1.weight", "1.bias"}
    [only] = parameter_groups(nn.Linear(3, 4, bias=False), 0.1, exclude_norm_bias=True)
    assert only["weight_decay"] == 0.1 and len(only["params"]) == 1


# ---------------------------------------------------------------------- LARS
def lars_numpy(weights, grads_per_step, groups, lr, momentum, eta, nesterov):
    """A straight transcription of LARS (SimCLR/BYOL): weights[i] belongs to groups[i] = (weight_decay, exclude)."""
    w = [x.astype(np.float64).copy() for x in weights]
    buf = [None] * len(w)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            wd, exclude = groups[i]
            d = g + wd * w[i]
            if not exclude:
                w_norm, d_norm = np.linalg.norm(w[i]), np.linalg.norm(d)
                if w_norm > 0 and d_norm > 0:
                    d = d * (eta * w_norm / d_norm)
            buf[i] = d.copy() if buf[i] is None else momentum * buf[i] + d
            update = d + momentum * buf[i] if nesterov else buf[i]
            w[i] = w[i] - lr * update
    return w


@pytest.mark.parametrize("exclude_norm_bias, nesterov", [(True, False), (False, True)])
def test_lars_matches_a_numpy_transcription(exclude_norm_bias, nesterov):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].bias.zero_()                                      # ||w|| = 0: trust ratio 1
    groups = parameter_groups(model, weight_decay=0.05, exclude_norm_bias=exclude_norm_bias)
    optimizer = build_optimizer("lars", groups, lr=2.0, momentum=0.9, nesterov=nesterov)
    assert isinstance(optimizer, LARS)
    params = list(model.parameters())
    group_of = {id(p): (g["weight_decay"], g.get("lars_exclude", False)) for g in groups for p in g["params"]}
    start = [p.detach().numpy().copy() for p in params]
    steps = [[torch.randn_like(p) for p in params] for _ in range(3)]
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    expected = lars_numpy(start, [[g.numpy() for g in grads] for grads in steps],
                          [group_of[id(p)] for p in params], lr=2.0, momentum=0.9, eta=0.001, nesterov=nesterov)
    for p, w, w0 in zip(params, expected, start):
        assert not np.allclose(w, w0)                                  # every tensor moved
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-5, atol=1e-7)


def test_lars_trust_ratio_scales_the_step_to_eta_times_the_weight_norm():
    """Without momentum the first step of an adapted tensor has norm lr * eta * ||w||, whatever ||g||."""
    w = nn.Parameter(torch.full((10,), 2.0))
    optimizer = LARS([w], lr=1.0, momentum=0.0, eta=0.01)
    w.grad = torch.full((10,), 1e6)
    before = w.detach().clone()
    optimizer.step()
    assert torch.linalg.vector_norm(w.detach() - before).item() == pytest.approx(0.01 * math.sqrt(40))


# ---------------------------------------------------------------------- lr curves
LR, SPE, EPOCHS = 0.1, 4, 6   # base lr, steps per epoch, epochs


def lr_curve(name: str, epochs: int = EPOCHS, groups: int = 1, **kwargs) -> tuple[list[list[float]], object]:
    """lr of every step (per group) stepping the scheduler as the Trainer does, and the scheduler."""
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr": LR / (i + 1)} for i in range(groups)]
    optimizer = torch.optim.SGD(params, lr=LR)
    scheduler = build_scheduler(name, optimizer, steps_per_epoch=SPE, epochs=epochs, **kwargs)
    curve = []
    for _ in range(epochs):
        for _ in range(SPE):
            curve.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            if scheduler is not None and not isinstance(scheduler, PER_EPOCH_SCHEDULERS):
                scheduler.step()
        if isinstance(scheduler, PER_EPOCH_SCHEDULERS):
            scheduler.step()
    curve.append([g["lr"] for g in optimizer.param_groups])   # after the last step: where the schedule ends
    return curve, scheduler


def first_group(curve):
    return [lrs[0] for lrs in curve]


WARMUP_EPOCH = [0.025, 0.05, 0.075, 0.1]   # 1 warm-up epoch of 4 steps up to 0.1


def test_cosine_warms_up_then_decays_to_min_lr():
    curve, _ = lr_curve("cosine", warmup_epochs=1.0, min_lr=0.01)
    lrs = first_group(curve)
    assert lrs[:4] == pytest.approx(WARMUP_EPOCH)
    # 20 steps after warm-up: 0.01 + 0.09 * (1 + cos(pi * t)) / 2, t = (s - 4) / 20
    assert lrs[4] == pytest.approx(0.1) and lrs[14] == pytest.approx(0.055) and lrs[9] == pytest.approx(
        0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[-1] == pytest.approx(0.01) and min(lrs[4:]) == pytest.approx(0.01)
    assert lrs[4:] == sorted(lrs[4:], reverse=True)


def test_cosine_min_lr_is_absolute_for_every_group():
    curve, _ = lr_curve("cosine", groups=2, min_lr=0.01)
    assert curve[0] == pytest.approx([0.1, 0.05]) and curve[-1] == pytest.approx([0.01, 0.01])
    assert curve[12] == pytest.approx([0.055, 0.03])                    # half way: (b + m) / 2


def test_step_warms_up_per_step_then_decays_per_epoch_down_to_min_lr():
    curve, scheduler = lr_curve("step", warmup_epochs=1.0, step_size=2, gamma=0.5, min_lr=0.03)
    assert not isinstance(scheduler, PER_EPOCH_SCHEDULERS)
    epochs = [first_group(curve)[e * SPE:(e + 1) * SPE] for e in range(EPOCHS)]
    assert epochs[0] == pytest.approx(WARMUP_EPOCH)
    assert epochs[1:] == [pytest.approx([lr] * 4) for lr in (0.1, 0.05, 0.05, 0.03, 0.03)]   # 0.025 floored


def test_step_min_lr_without_warm_up_floors_the_decay():
    curve, _ = lr_curve("step", step_size=1, gamma=0.5, min_lr=0.02)
    assert first_group(curve)[::SPE] == pytest.approx([0.1, 0.05, 0.025, 0.02, 0.02, 0.02, 0.02])


def test_multistep_warm_up_of_half_an_epoch():
    curve, _ = lr_curve("multistep", warmup_epochs=0.5, milestones=[3, 2], gamma=0.1)
    lrs = first_group(curve)
    assert lrs[:8] == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert lrs[8:12] == pytest.approx([0.01] * 4) and lrs[12:] == pytest.approx([0.001] * 13)


@pytest.mark.parametrize("name, kwargs", [("step", dict(step_size=2, gamma=0.5)),
                                          ("multistep", dict(milestones=[2, 5], gamma=0.1))])
def test_step_schedules_with_warm_up_give_torchs_per_epoch_lrs_after_it(name, kwargs):
    """Per-step schedule with warm-up == torch's StepLR/MultiStepLR (per epoch, no warm-up) after the warm-up."""
    plain, torch_scheduler = lr_curve(name, **kwargs)
    warm, ours = lr_curve(name, warmup_epochs=1.5, **kwargs)
    assert isinstance(torch_scheduler, PER_EPOCH_SCHEDULERS) and not isinstance(ours, PER_EPOCH_SCHEDULERS)
    assert first_group(warm)[2 * SPE:] == pytest.approx(first_group(plain)[2 * SPE:])
    assert first_group(warm)[:6] == pytest.approx([LR * (s + 1) / 6 for s in range(6)])


def test_none_schedule_is_a_warm_up_or_nothing():
    curve, _ = lr_curve("none", warmup_epochs=1.0)
    assert first_group(curve) == pytest.approx(WARMUP_EPOCH + [0.1] * 21)
    assert lr_curve("none")[1] is None


def test_onecycle_warm_up_length_and_final_lr():
    curve, _ = lr_curve("onecycle", warmup_epochs=1.0, min_lr=1e-4)
    lrs = first_group(curve)[:-1]           # OneCycleLR ends at its total steps
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[3] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)
    assert lrs[:4] == sorted(lrs[:4]) and lrs[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_rebuilding_after_a_new_group_keeps_the_peak_lr(name):
    """Trainer.attach_criterion adds the criterion's group, then builds the schedule again."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    build_scheduler(name, optimizer, steps_per_epoch=SPE, epochs=EPOCHS, warmup_epochs=1.0)
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    scheduler = build_scheduler(name, optimizer, steps_per_epoch=SPE, epochs=EPOCHS, warmup_epochs=1.0)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([LR, LR])   # the end of the warm-up


def test_min_lr_above_the_lr_is_refused():
    with pytest.raises(ValueError, match="scheduler.min_lr"):
        lr_curve("cosine", min_lr=0.5)
    with pytest.raises(ValueError, match="scheduler.min_lr"):
        lr_curve("onecycle", min_lr=0.01)    # above its start lr 0.1 / 25


@pytest.mark.parametrize("name, kwargs", [
    ("cosine", dict(warmup_epochs=1.0, min_lr=0.01)), ("step", dict(warmup_epochs=1.0, step_size=2, min_lr=0.002)),
    ("step", dict(step_size=2)), ("multistep", dict(warmup_epochs=0.5, milestones=[2, 4])),
    ("none", dict(warmup_epochs=2.0)), ("onecycle", dict(warmup_epochs=1.0, min_lr=1e-4))])
def test_scheduler_state_round_trip_continues_the_same_curve(name, kwargs):
    """Save the scheduler after 9 steps (weights_only load, as checkpoints are), rebuild, load, continue."""
    full = first_group(lr_curve(name, **kwargs)[0])

    def build():
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
        return optimizer, build_scheduler(name, optimizer, steps_per_epoch=SPE, epochs=EPOCHS, **kwargs)

    optimizer, scheduler = build()
    per_epoch = isinstance(scheduler, PER_EPOCH_SCHEDULERS)
    stop = 2 if per_epoch else 9            # epochs or steps
    for _ in range(stop):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    optimizer, scheduler = build()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(EPOCHS - stop if per_epoch else EPOCHS * SPE - stop):
        rest.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rest == pytest.approx(full[::SPE][stop:EPOCHS] if per_epoch else full[stop:EPOCHS * SPE], rel=1e-12)


# ---------------------------------------------------------------------- through the config and the Trainer
class Batches:
    def __init__(self, n: int, batch: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 6, generator=g)
        self.batches = [(x[i:i + batch], (x[i:i + batch, 0] > 0).long()) for i in range(0, n, batch)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class SmallTrainer(Trainer):
    stop_at: int | None = None

    def initialize_model(self) -> None:
        self.model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def initialize_train_loader(self) -> None:
        self.train_loader = Batches(64, 16, seed=0)

    def initialize_val_loader(self) -> None:
        self.val_loader = Batches(32, 16, seed=1)

    def after_train_step(self) -> None:
        super().after_train_step()
        if self.stop_at is not None and self.step == self.stop_at:
            self.request_stop()


@pytest.fixture
def config(tmp_path):
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "model.num_classes": 2,
                "training.epochs": 4, "logging.log_every": 1, "optimizer.name": "lars", "optimizer.lr": 2.0,
                "optimizer.weight_decay": 1e-3, "optimizer.exclude_norm_bias": True, "scheduler.name": "step",
                "scheduler.step_size": 2, "scheduler.gamma": 0.5, "scheduler.warmup_epochs": 1.0,
                "scheduler.min_lr": 0.6})
    yield
    reset_config(keep_sections=True)


def test_config_drives_lars_no_decay_groups_warm_up_and_min_lr(config):
    trainer = SmallTrainer()
    assert isinstance(trainer.optimizer, LARS)
    assert [(g["weight_decay"], g.get("lars_exclude", False), len(g["params"])) for g in trainer.optimizer.param_groups] \
        == [(1e-3, False, 2), (0.0, True, 4)]
    trainer.run()
    lrs = [r["lr"] for r in read_log(trainer.run_dir) if r.get("kind") == "train_step"]   # logged after the step
    assert lrs == pytest.approx([1.0, 1.5, 2.0] + [2.0] * 4 + [1.0] * 8 + [0.6])   # step 15: 2.0 * 0.25 floored


def test_config_driven_schedule_resumes_exactly(config, tmp_path):
    set_values({"logging.run_id": "full"})
    full = SmallTrainer()
    full.run()
    set_values({"logging.run_id": "cut"})
    cut = SmallTrainer()
    cut.stop_at = 6                             # mid-epoch, inside the second epoch
    cut.run()
    resumed = SmallTrainer()
    assert resumed.step == 7 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(2.0)
    resumed.run()
    for key, value in full.raw_model.state_dict().items():
        assert torch.equal(value, resumed.raw_model.state_dict()[key]), key
    last_epoch = [[r for r in read_log(t.run_dir) if r["kind"] == "epoch"][-1] for t in (full, resumed)]
    assert last_epoch[0]["val_loss"] == last_epoch[1]["val_loss"]


@pytest.mark.parametrize("name, settings, sentence", [
    ("ffcv_cyclic", {"scheduler.warmup_epochs": 1.0, "scheduler.lr_peak_epoch": 3},
     "scheduler.warmup_epochs is 1 but scheduler.name ffcv_cyclic does not use it: its warm-up is the ramp up to "
     "scheduler.lr_peak_epoch (now 3): set that instead, and scheduler.warmup_epochs 0"),
    ("ffcv_cifar_cyclic", {"scheduler.warmup_epochs": 0.5, "scheduler.min_lr": 0.0},
     "scheduler.warmup_epochs is 0.5 but scheduler.name ffcv_cifar_cyclic does not use it: its warm-up is the ramp "
     "up to scheduler.lr_peak_epoch (now 2): set that instead, and scheduler.warmup_epochs 0"),
    ("ffcv_step", {"scheduler.warmup_epochs": 2.0},
     "scheduler.warmup_epochs is 2 but scheduler.name ffcv_step does not use it: ffcv_step has no warm-up (use "
     "ffcv_cyclic for a ramp up to scheduler.lr_peak_epoch), and scheduler.warmup_epochs 0"),
    ("ffcv_cyclic", {"scheduler.warmup_epochs": 0.0},
     "scheduler.min_lr is 0.6 but scheduler.name ffcv_cyclic does not use it: FFCV's schedules end at lr 0 after "
     "training.epochs (set scheduler.min_lr 0, or use cosine)"),
])
def test_ffcv_schedules_refuse_the_keys_they_do_not_use(config, capsys, name, settings, sentence):
    """scheduler.warmup_epochs / min_lr are not silently ignored by FFCV's schedules: one sentence, exit 2."""
    set_values({"scheduler.name": name, "scheduler.lr_peak_epoch": 2, "scheduler.min_lr": 0.6, **settings})
    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(lambda argv: SmallTrainer().run(), argv=[])
    assert stopped.value.code == USER_ERROR_EXIT
    assert capsys.readouterr().err == f"error: {sentence}\n"


def test_ffcv_schedule_without_those_keys_trains(config):
    set_values({"scheduler.name": "ffcv_cyclic", "scheduler.warmup_epochs": 0.0, "scheduler.min_lr": 0.0,
                "scheduler.lr_peak_epoch": 2})
    trainer = SmallTrainer()
    trainer.run()
    lrs = [r["lr"] for r in read_log(trainer.run_dir) if r.get("kind") == "train_step"]
    assert max(lrs) == pytest.approx(2.0, rel=0.01) and lrs[-1] < 0.2   # the ramp to the peak, then down to 0
