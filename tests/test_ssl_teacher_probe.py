"""The momentum teacher (BYOL, MoCo v3, DINO), the online linear probe and RankMe: each against a
transcription of its reference, and all three resumed exactly from a checkpoint by the Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchstrap_runtime.evaluation import OnlineLinearProbe, rankme
from torchstrap_runtime.methods.teacher import MomentumTeacher, teacher_momentum

from test_trainer import TinyTrainer, config, run_straight_then_stopped  # noqa: F401  (config: autouse fixture)


# --------------------------------------------------------------------------- transcriptions of the references
def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep):
    """facebookresearch/dino utils.cosine_scheduler without warm-up."""
    iters = np.arange(epochs * niter_per_ep)
    return final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))


def byol_target_decay(base, step, max_steps):
    """BYOL's target EMA decay at a training step."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max_steps) + 1) / 2


def mocov3_momentum(epoch, epochs, moco_m):
    """facebookresearch/moco-v3 main_moco.adjust_moco_momentum (epoch: fractional)."""
    return 1. - 0.5 * (1. + math.cos(math.pi * epoch / epochs)) * (1. - moco_m)


def rankme_reference(z, eps=1e-7):
    s = np.linalg.svd(z, compute_uv=False)
    p = s / np.sum(np.abs(s)) + eps
    return float(np.exp(-np.sum(p * np.log(p))))


# --------------------------------------------------------------------------- the schedule and the update
def test_the_momentum_schedule_equals_the_three_authors():
    epochs, per_epoch = 7, 13
    dino = dino_cosine_scheduler(0.996, 1, epochs, per_epoch)
    ours = [teacher_momentum(0.996, it, epochs * per_epoch) for it in range(epochs * per_epoch)]
    np.testing.assert_allclose(ours, dino, rtol=0, atol=1e-15)
    assert ours[-1] < 1.0 and teacher_momentum(0.99, 50, 50) == 1.0
    for step in (0, 1, 17, 90):
        assert teacher_momentum(0.99, step, 91) == pytest.approx(byol_target_decay(0.99, step, 91), abs=1e-15)
        epoch = step / per_epoch
        assert teacher_momentum(0.99, step, epochs * per_epoch) == pytest.approx(
            mocov3_momentum(epoch, epochs, 0.99), abs=1e-15)


def student_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def test_the_update_equals_dino_s_loop_and_leaves_buffers_to_the_teacher():
    student = student_net()
    teacher = MomentumTeacher(student, 0.9, total_steps=10)
    reference = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for it in range(6):
        loss = student(torch.randn(16, 6, generator=g)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        m = dino_cosine_scheduler(0.9, 1, 1, 10)[it]
        for param_k, param_q in zip(reference, student.parameters()):  # DINO's teacher update, as written there
            param_k.mul_(m).add_((1 - m) * param_q.detach())
        assert teacher.update(student) == pytest.approx(m, abs=1e-15)
    for mine, theirs in zip(teacher.network.parameters(), reference):
        assert torch.equal(mine, theirs) and not mine.requires_grad
    assert torch.equal(teacher.network[1].running_mean, torch.zeros(8))  # student's ran; the teacher's did not
    assert not torch.equal(student[1].running_mean, torch.zeros(8))
    assert not torch.equal(teacher.network[0].weight, student[0].weight)  # it lags behind (the test can fail)


def test_mocov3_offset_uses_the_next_step_s_momentum():
    teacher = MomentumTeacher(student_net(), 0.99, total_steps=20, offset=1)
    assert teacher.momentum() == pytest.approx(mocov3_momentum(1 / 20, 1, 0.99), abs=1e-15)


def test_the_teacher_refuses_bad_settings():
    with pytest.raises(ValueError, match="base momentum must be in"):
        MomentumTeacher(student_net(), 1.5, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        MomentumTeacher(student_net(), 0.99, 0)


# --------------------------------------------------------------------------- RankMe and the probe
def test_rankme_equals_its_definition():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 16, generator=g, dtype=torch.float64)
    assert rankme(z) == pytest.approx(rankme_reference(z.numpy()), rel=1e-12)
    assert rankme(z) > 14
    collapsed = torch.randn(200, 1, generator=g).repeat(1, 16)
    assert rankme(collapsed) < 1.01


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    return torch.eye(3, 10)[labels] * 3 + 0.3 * torch.randn(n, 10, generator=g), labels


def test_the_probe_learns_without_touching_the_backbone_and_resumes_exactly():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(10, 10)
    probe = OnlineLinearProbe(10, 3, lr=0.05)
    x, y = separable(96, 0)
    for _ in range(30):
        probe.train_step(backbone(x), y)
    assert backbone.weight.grad is None
    x_val, y_val = separable(60, 1)
    assert (probe(backbone(x_val)).argmax(1) == y_val).float().mean() > 0.9
    copy = OnlineLinearProbe(10, 3, lr=0.05)
    copy.load_state_dict(probe.state_dict())   # weights and AdamW's moments
    for _ in range(3):
        probe.train_step(backbone(x), y)
        copy.train_step(backbone(x), y)
    assert all(torch.equal(a, b) for a, b in zip(probe.state_dict().values(), copy.state_dict().values())
               if isinstance(a, torch.Tensor))



def test_the_probe_normalizes_its_features_so_their_scale_and_offset_do_not_matter():
    x, y = separable(96, 0)
    probes = []
    for features in (x, 1000 * x + 50):
        torch.manual_seed(0)
        probe = OnlineLinearProbe(10, 3, lr=0.05)
        for _ in range(20):
            probe.train_step(features, y)
        probes.append(probe)
    plain, scaled = probes
    assert torch.allclose(plain.linear.weight, scaled.linear.weight, atol=1e-4)
    assert torch.allclose(scaled.norm.running_mean, 50 + 1000 * x.mean(0), rtol=0.2)  # running statistics follow
    x_val, _ = separable(60, 1)
    assert torch.equal(plain(x_val).argmax(1), scaled(1000 * x_val + 50).argmax(1))

# --------------------------------------------------------------------------- in a Trainer: resumed exactly
class WithTeacherAndProbe(TinyTrainer):
    """A teacher following the model and a probe on its hidden features, both in the Trainer's checkpoint."""

    def initialize_metrics(self) -> None:
        super().initialize_metrics()
        torch.manual_seed(5)
        self.teacher = MomentumTeacher(self.raw_model, 0.9, total_steps=3 * len(self.train_loader))
        self.probe = OnlineLinearProbe(16, 2, lr=0.01)
        self.checkpointed = {"teacher": self.teacher, "probe": self.probe}

    def after_train_step(self) -> None:
        super().after_train_step()
        self.teacher.update(self.raw_model)
        inputs, labels = self.to_device(self.data)
        self.probe.train_step(self.raw_model[:3](inputs), labels)


def test_teacher_and_probe_resume_bitwise(tmp_path):
    straight = run_straight_then_stopped(WithTeacherAndProbe)
    resumed = WithTeacherAndProbe()
    assert int(resumed.teacher.updates) == 6
    resumed.run()
    for name in ("teacher", "probe"):
        ours, theirs = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key, value in ours.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, theirs[key]), (name, key)
    assert int(resumed.teacher.updates) == 3 * len(straight.train_loader)
