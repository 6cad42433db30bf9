"""The six SSL criteria (simclr, vicreg, barlow_twins, byol, mocov3, dino) against transcriptions of their
authors' code (tests/ssl_reference.py): forward and gradients in float64, several batch sizes and widths;
DINO's center and teacher-temperature schedule over epochs; input errors."""

from __future__ import annotations

import pytest
import torch

import ssl_reference as ref
from torchstrap_runtime.criteria import INPUT_KINDS, build_criterion, list_criteria

SHAPES = [(2, 3), (7, 16), (32, 8), (64, 65)]
SSL_NAMES = ["simclr", "vicreg", "barlow_twins", "byol", "mocov3", "dino"]


def views(n: int, batch: int, width: int, seed: int, grad: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, width, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(n)]


def loss_and_grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return loss.detach(), [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def assert_same(ours, theirs, inputs):
    loss, grads = loss_and_grads(ours, inputs)
    ref_loss, ref_grads = loss_and_grads(theirs, inputs)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=1e-12), (float(loss), float(ref_loss))
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-12), (g - r).abs().max()


def test_names_kind_and_authors_defaults():
    assert "student_teacher" in INPUT_KINDS
    built = {name: build_criterion(name, {"out_dim": 8} if name == "dino" else None) for name in SSL_NAMES}
    assert set(SSL_NAMES) <= set(list_criteria())
    assert all(c.input_kind == "student_teacher" for c in built.values())
    assert built["simclr"].temperature == 0.1
    v = built["vicreg"]
    assert (v.sim_coeff, v.std_coeff, v.cov_coeff) == (25.0, 25.0, 1.0)
    assert built["barlow_twins"].lambd == 0.0051
    assert built["mocov3"].temperature == 1.0
    d = built["dino"]
    assert (d.nepochs, d.student_temp, d.center_momentum) == (100, 0.1, 0.9)
    assert torch.allclose(d.teacher_temp_schedule, torch.full((100,), 0.04, dtype=torch.float64))
    assert build_criterion("dino").center.shape == (1, 65536)


@pytest.mark.parametrize("batch,width", SHAPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_simclr_is_half_google_research_loss(batch, width, temperature):
    z = views(2, batch, width, seed=batch + width)
    ours = build_criterion("simclr", {"temperature": temperature}).double()(z)
    assert_same(ours, ref.simclr_add_contrastive_loss(torch.cat(z), temperature=temperature) / 2, z)


@pytest.mark.parametrize("batch,width", SHAPES)
def test_vicreg_equals_authors(batch, width):
    z = views(2, batch, width, seed=1 + batch * width)
    coefficients = {"sim_coeff": 20.0, "std_coeff": 30.0, "cov_coeff": 2.0}
    assert_same(build_criterion("vicreg")(z), ref.vicreg_forward(*z, batch_size=batch), z)
    assert_same(build_criterion("vicreg", coefficients)(z), ref.vicreg_forward(*z, batch, **coefficients), z)


@pytest.mark.parametrize("batch,width", SHAPES)
@pytest.mark.parametrize("lambd", [0.0051, 0.1])
def test_barlow_twins_equals_authors(batch, width, lambd):
    z = views(2, batch, width, seed=2 + batch * width)
    theirs = ref.BarlowTwinsHead(width, batch, lambd).double().train()
    assert_same(build_criterion("barlow_twins", {"lambd": lambd})(z), theirs(*z), z)


@pytest.mark.parametrize("batch,width", SHAPES)
def test_byol_equals_authors(batch, width):
    p = views(2, batch, width, seed=3 + batch * width)
    t = views(2, batch, width, seed=4 + batch * width)
    inputs = p + t   # the targets get no gradient in either
    assert_same(build_criterion("byol")(p, t), ref.byol_repr_loss(p[0], p[1], t[0], t[1]), inputs)
    assert all(g.abs().sum() == 0 for g in loss_and_grads(build_criterion("byol")(p, t), inputs)[1][2:])


@pytest.mark.parametrize("batch,width", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_mocov3_equals_authors(batch, width, temperature):
    q = views(2, batch, width, seed=5 + batch * width)
    k = views(2, batch, width, seed=6 + batch * width)
    ours = build_criterion("mocov3", {"temperature": temperature})(q, k)
    assert_same(ours, ref.mocov3_forward(q[0], q[1], k[0], k[1], T=temperature), q + k)


@pytest.mark.parametrize("batch,width,local_crops", [(4, 8, 0), (16, 32, 3), (5, 65, 6)])
def test_dino_equals_authors_over_epochs(batch, width, local_crops):
    params = {"out_dim": width, "nepochs": 5, "warmup_teacher_temp": 0.04, "teacher_temp": 0.07,
              "warmup_teacher_temp_epochs": 3, "student_temp": 0.1, "center_momentum": 0.9}
    ours = build_criterion("dino", params).double()
    theirs = ref.AuthorsDINOLoss(width, 2 + local_crops, 0.04, 0.07, 3, 5).double()
    assert torch.allclose(ours.teacher_temp_schedule, torch.from_numpy(theirs.teacher_temp_schedule))
    seed = 0
    for epoch in range(5):
        ours.set_epoch(epoch)
        for _ in range(2):
            seed += 1
            student = views(2 + local_crops, batch, width, seed)
            teacher = [3 * t for t in views(2, batch, width, seed + 1000, grad=False)]  # an off-centre teacher
            mine = ours(student, teacher)
            assert_same(mine, theirs(torch.cat(student), torch.cat(teacher), epoch), student)
            assert torch.allclose(ours.center, theirs.center, rtol=1e-12, atol=1e-14)
    assert ours.center.abs().sum() > 0


def test_dino_state_dict_holds_center_epoch_and_schedule():
    params = {"out_dim": 6, "nepochs": 4, "warmup_teacher_temp_epochs": 2, "warmup_teacher_temp": 0.03}
    first = build_criterion("dino", params).double()
    first.set_epoch(1)
    for seed in range(3):
        first(views(3, 5, 6, seed), views(2, 5, 6, seed + 10, grad=False))
    state = first.state_dict()
    assert {"center", "teacher_temp_schedule", "epoch"} <= set(state)
    assert torch.equal(state["center"], first.center) and int(state["epoch"]) == 1
    second = build_criterion("dino", params).double()
    second.load_state_dict(state)
    student, teacher = views(3, 5, 6, 99), views(2, 5, 6, 98, grad=False)
    assert torch.equal(first(student, teacher), second(student, teacher))
    assert torch.equal(first.center, second.center)


def test_dino_eval_mode_leaves_center_and_schedule_past_the_end_keeps_last_temperature():
    dino = build_criterion("dino", {"out_dim": 4, "nepochs": 2, "warmup_teacher_temp_epochs": 2,
                                    "warmup_teacher_temp": 0.02, "teacher_temp": 0.06}).double()
    dino.eval()
    dino(views(2, 3, 4, 0), views(2, 3, 4, 1, grad=False))
    assert dino.center.abs().sum() == 0
    dino.set_epoch(7)
    assert float(dino.teacher_temp()) == pytest.approx(0.06)


@pytest.mark.parametrize("name,student,teacher,message", [
    ("simclr", 3, None, "needs 2 student views"),
    ("simclr", 2, 2, "no teacher"),
    ("vicreg", 1, None, "needs 2 student views"),
    ("byol", 2, None, "needs the teacher"),
    ("mocov3", 2, 1, "needs 2 teacher views"),
    ("dino", 1, 1, "at least 2 student views"),
    ("dino", 2, 3, "a subset of the student's 2"),
    ("dino", 3, 0, "at least 1 teacher views"),
])
def test_wrong_views_name_the_method(name, student, teacher, message):
    criterion = build_criterion(name, {"out_dim": 4} if name == "dino" else None)
    t = None if teacher is None else views(teacher, 3, 4, 1)
    with pytest.raises(ValueError, match=message):
        criterion(views(student, 3, 4, 0), t)


def test_bad_inputs_and_parameters():
    with pytest.raises(ValueError, match="list of per-view"):
        build_criterion("simclr")(torch.randn(4, 3))
    with pytest.raises(ValueError, match="different batch sizes"):
        build_criterion("vicreg")([torch.randn(4, 3), torch.randn(5, 3)])
    with pytest.raises(ValueError, match="out_dim=8"):
        build_criterion("dino", {"out_dim": 8})(views(2, 3, 4, 0), views(2, 3, 4, 1))
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        build_criterion("simclr", {"temprature": 0.2})
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs"):
        build_criterion("dino", {"nepochs": 10, "warmup_teacher_temp_epochs": 30})


@pytest.mark.parametrize("name", SSL_NAMES)
def test_half_precision_inputs_are_computed_in_float32(name):
    criterion = build_criterion(name, {"out_dim": 16} if name == "dino" else None)
    student = views(3 if name == "dino" else 2, 8, 16, 0, grad=False)
    teacher = views(2, 8, 16, 1, grad=False) if name in ("byol", "mocov3", "dino") else None
    as_float = criterion([s.float() for s in student], None if teacher is None else [t.float() for t in teacher])
    if name == "dino":
        criterion = build_criterion(name, {"out_dim": 16})   # a fresh center
    as_bf16 = criterion([s.bfloat16() for s in student], None if teacher is None else [t.bfloat16() for t in teacher])
    assert as_bf16.dtype == torch.float32 and torch.isfinite(as_bf16)
    assert torch.allclose(as_bf16, as_float, rtol=0.05)
