"""CoKe: step-for-step equivalence with the authors' update rules, clustering sanity, state, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from coke_reference import AuthorsCoKe
from sklearn.datasets import make_blobs

from torchstrap_runtime.criteria import CoKeMultiView, CoKeSingleView, build_criterion, nmi
from torchstrap_runtime.methods.coke import RECIPES

NAMES = {"single": "coke_single_view", "double": "coke_double_view", "multi": "coke_multi_view"}
VIEWS = {"single": 1, "double": 2, "multi": 5}  # multi: 2 large + 3 small crops


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread avoids spin-waiting on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(n: int, d: int, views: int, epochs: int, seed: int) -> list[list[torch.Tensor]]:
    """Per epoch, per view: [n, d] outputs of a drifting 'encoder' on 12 latent groups, plus noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(12, d, generator=g) * 2
    group = torch.randint(12, (n,), generator=g)
    out = []
    for e in range(epochs):
        drift = 0.3 * e * torch.randn(12, d, generator=g)
        base = means[group] + drift[group] + torch.randn(n, d, generator=g)
        out.append([base + 0.5 * torch.randn(n, d, generator=g) for _ in range(views)])
    return out


def run_both(mode: str, ks: list[int], ratio: float, stage: int = 801, ls: int = 5, n: int = 600, d: int = 16,
             batch: int = 100, epochs: int = 3, seed: int = 0):
    """Our criterion and the transcription on the same centers, features and batches; returns the figures."""
    views = VIEWS[mode]
    feats = features(n, d, views, epochs, seed)
    preds = features(n, d, views, epochs, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    centers = [F.normalize(torch.randn(k, d, generator=g), dim=1) for k in ks]
    T = 0.1 if mode == "single" else 0.05
    params = {"embedding_size": d, "num_samples": n, "num_clusters": ks, "temperature": T, "dual_lr": 20.0,
              "min_size_ratio": ratio}
    if mode == "single":
        params.update(beta=0.5, stage=stage, soft_label_size=ls, soft_label_temperature=0.5)
    else:
        params.update(alpha=0.2)
    if mode == "multi":
        params.update(beta=0.5, num_small_crops=views - 2)
    ours = build_criterion(NAMES[mode], params)
    ours.load_centers(centers)
    theirs = AuthorsCoKe(mode, centers, n, T, 20.0, ratio, alpha=0.2, beta=0.5, stage=stage, t=0.5, ls=ls)
    agree = total = 0
    dual_err = loss_err = 0.0
    for e in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            proj = [f[idx] for f in feats[e]]
            pred = [p[idx] for p in preds[e]]
            loss = ours(proj, idx, pred)
            ref_loss, ref_labels = theirs.step(proj, pred, idx, e)
            for mine, ref in zip(ours.last_assignments, ref_labels):
                agree += int((mine == ref).sum())
                total += ref.numel()
            dual_err = max(dual_err, *(float((a - b).abs().max()) for a, b in zip(ours.duals, theirs.duals)))
            loss_err = max(loss_err, abs(float(loss) - float(ref_loss)))
        ours.end_epoch()
        theirs.update_center(e)
    center_err = max(float((a - b.T).abs().max()) for a, b in zip(ours.logit_centers, theirs.pre))
    return agree / total, dual_err, loss_err, center_err


CASES = [(mode, ks, ratio) for mode in ("single", "double", "multi")
         for ks in ([20, 30], [200, 300]) for ratio in (0.4, 1.0)]


@pytest.mark.parametrize("mode,ks,ratio", CASES)
def test_matches_the_authors_update_rules_over_three_epochs(mode, ks, ratio):
    agreement, dual_err, loss_err, center_err = run_both(mode, ks, ratio)
    print(f"{mode} K={ks} ratio={ratio}: agreement {agreement:.4%}, duals {dual_err:.1e}, losses {loss_err:.1e}, "
          f"centers {center_err:.1e}")
    assert agreement >= 0.999
    assert dual_err <= 1e-5 and loss_err <= 1e-4 and center_err <= 1e-5


@pytest.mark.parametrize("ks", [[20, 30], [200, 300]])
def test_single_view_stage_two_soft_labels_match_the_authors(ks):
    """stage=1: epoch 1 starts the soft-label memory, epochs 2-4 mix labels into it (3 slots) and train on
    soft labels and averaged centers."""
    agreement, dual_err, loss_err, center_err = run_both("single", ks, 0.4, stage=1, ls=3, epochs=5)
    print(f"single stage 2 K={ks}: agreement {agreement:.4%}, duals {dual_err:.1e}, losses {loss_err:.1e}")
    assert agreement >= 0.999
    assert dual_err <= 1e-5 and loss_err <= 1e-4 and center_err <= 1e-5


# ----------------------------------------------------------------------------- clustering sanity

def test_recovers_gaussian_blobs_like_the_authors():
    """Pure clustering (fixed features, as in the recipes' lr = 0 first epoch): NMI 1.0 for both."""
    k, n = 6, 1200
    x, y = make_blobs(n_samples=n, n_features=16, centers=k, cluster_std=1.0, center_box=(-10, 10), random_state=3)
    x = torch.tensor(x, dtype=torch.float32)
    x = x - x.mean(0)
    params = {"embedding_size": 16, "num_samples": n, "num_clusters": [k], "temperature": 0.1, "dual_lr": 1.0,
              "min_size_ratio": 0.4, "seed": 0}
    ours = build_criterion("coke_single_view", params)
    theirs = AuthorsCoKe("single", [c.clone() for c in ours.centers], n, 0.1, 1.0, 0.4)
    g = torch.Generator().manual_seed(0)
    for e in range(5):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, 100):
            idx = order[i:i + 100]
            ours([x[idx]], idx)
            theirs.step([x[idx]], [x[idx]], idx, e)
        ours.end_epoch()
        theirs.update_center(e)
    ours_nmi, theirs_nmi = nmi(y, ours.labels[0, :, 0]), nmi(y, theirs.assign_labels[0, :, 0])
    print(f"NMI ours {ours_nmi:.4f}, authors' rules {theirs_nmi:.4f}")
    assert theirs_nmi == pytest.approx(1.0) and ours_nmi == pytest.approx(1.0)


# ----------------------------------------------------------------------------- interface and state

def test_presets_hold_the_authors_settings():
    multi = RECIPES["coke_multi"]
    assert multi.criterion == "coke_multi_view" and multi.views == "coke_imagenet_multi_view"
    assert multi.params["num_clusters"] == [3000, 4000, 5000] and multi.params["num_small_crops"] == 6
    assert RECIPES["coke_single"].params["temperature"] == 0.1
    assert RECIPES["coke_double"].params["temperature"] == 0.05
    for recipe in RECIPES.values():
        criterion = build_criterion(recipe.criterion, {**recipe.params,
                                                                  "num_samples": 10, "num_clusters": [4, 5, 6]})
        assert criterion.dual_lr == 20.0 and criterion.min_size_ratio == 0.4 and criterion.num_heads == 3


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(180, 16, generator=g)
    params = {"embedding_size": 16, "num_samples": 180, "num_clusters": [3, 4], "stage": 1, "soft_label_size": 3,
              "seed": 0, "dual_lr": 1.0}
    a = build_criterion("coke_single_view", params)
    for _ in range(2):
        for i in range(0, 180, 60):
            idx = torch.arange(i, i + 60)
            a(x[idx], idx)
        a.end_epoch()
    a(x[:90], torch.arange(90))
    keys = set(a.state_dict())
    assert {"centers_0", "logit_centers_1", "duals_0", "counters_1", "labels", "label_weights", "label_slot",
            "epochs_done"} <= keys
    torch.save(a.state_dict(), tmp_path / "criterion.pt")
    b = build_criterion("coke_single_view", params)
    b.load_state_dict(torch.load(tmp_path / "criterion.pt"))
    rest = torch.arange(90, 180)
    with torch.no_grad():
        assert torch.equal(a(x[rest], rest), b(x[rest], rest))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_kmeans_plus_plus_init_and_load_centers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    c = build_criterion("coke_double_view", {"embedding_size": 8, "num_samples": 64, "num_clusters": [4],
                                             "init": "kmeans++"})
    c([x, x + 0.01], torch.arange(64))
    first = F.normalize(x + 0.005, dim=1)
    assert all(any(torch.allclose(row, f, atol=1e-2) for f in first) for row in c.logit_centers[0])
    new = [F.normalize(torch.randn(4, 8, generator=g), dim=1)]
    c.load_centers(new)
    assert torch.equal(c.centers[0], new[0]) and torch.equal(c.logit_centers[0], new[0])
    with pytest.raises(ValueError, match="load_centers"):
        c.load_centers([torch.zeros(5, 8)])


def test_multi_view_without_indices_still_trains_older_callers():
    """tasks.SSLMultiViewTrainer calls criterion(views): the target is the current assignment."""
    criterion = build_criterion("coke_multi_view", {"embedding_size": 8, "num_clusters": [4, 6], "seed": 0})
    g = torch.Generator().manual_seed(0)
    v1 = torch.randn(64, 8, generator=g).requires_grad_()
    v2 = (v1.detach() + 0.05 * torch.randn(64, 8, generator=g)).requires_grad_()
    with pytest.warns(UserWarning, match="indices"):
        loss = criterion([v1, v2])
    loss.backward()
    assert torch.isfinite(loss) and v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0
    assert criterion.counters[0].sum() == 64 and "coke/head0/dual_mean" in criterion.end_epoch()


@pytest.mark.parametrize("name,params,message", [
    ("coke_single_view", {"embedding_size": 8, "num_samples": 10, "min_size_ratio": 1.5}, "min_size_ratio"),
    ("coke_single_view", {"embedding_size": 8}, "num_samples"),
    ("coke_single_view", {"embedding_size": 8, "num_samples": 10, "soft_label_size": 0}, "soft_label_size"),
    ("coke_multi_view", {"embedding_size": 8, "num_clusters": 1}, "num_clusters"),
    ("coke_multi_view", {"embedding_size": 8, "num_clusters": [4, 5], "num_heads": 3}, "num_heads"),
    ("coke_multi_view", {"embedding_size": 8, "temperature": 0}, "temperature"),
    ("coke_multi_view", {"embedding_size": 8, "init": "kmeans"}, "init"),
    ("coke_double_view", {"embedding_size": 8, "alpha": 2}, "alpha"),
    ("coke_multi_view", {"embedding_size": 8, "center_update": "epoch"}, "center_update"),
    ("coke_multi_view", {"embedding_size": 8, "num_cluster": 4}, "did you mean 'num_clusters'"),
])
def test_bad_hyper_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_criterion(name, params)


def test_bad_calls_are_explained():
    single = build_criterion("coke_single_view", {"embedding_size": 8, "num_samples": 10, "num_clusters": 4})
    with pytest.raises(ValueError, match="indices"):
        single(torch.randn(4, 8))
    with pytest.raises(ValueError, match="outside"):
        single(torch.randn(4, 8), torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="one view"):
        single([torch.randn(4, 8), torch.randn(4, 8)], torch.arange(4))
    multi = build_criterion("coke_multi_view", {"embedding_size": 8, "num_clusters": 4, "num_small_crops": 2})
    with pytest.raises(ValueError, match="4 views"):
        multi([torch.randn(4, 8)] * 3, torch.arange(4))
    double = build_criterion("coke_double_view", {"embedding_size": 8, "num_clusters": 4})
    with pytest.raises(ValueError, match="num_samples"):
        double([torch.randn(4, 8)] * 2, torch.arange(4))


def test_eval_mode_changes_no_state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    for criterion, views in [
        (CoKeSingleView(embedding_size=8, num_samples=64, num_clusters=4), [x]),
        (CoKeMultiView(embedding_size=8, num_samples=64, num_clusters=4), [x, x + 0.1, x[:, :8] * 2]),
    ]:
        criterion(views, torch.arange(64))  # train mode: updates
        before = {k: v.clone() for k, v in criterion.state_dict().items()}
        criterion.eval()
        assert torch.isfinite(criterion(views))  # validation samples need no indices
        for key, value in criterion.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_coke_heads_feed_the_criterion():
    from torchstrap_runtime.methods.coke import CoKeHeads, CoKePredictor, CoKeProjector

    torch.manual_seed(0)
    projector = CoKeProjector(32, 8)
    assert isinstance(projector.net[-1], torch.nn.BatchNorm1d) and len(projector.net) == 8
    predictor = CoKePredictor(8, 16)
    assert not isinstance(predictor.net[-1], torch.nn.BatchNorm1d)
    model = CoKeHeads(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 32)), in_dim=32, dim=8)
    criterion = build_criterion("coke_double_view", {"embedding_size": 8, "num_samples": 16, "num_clusters": [4]})
    x = torch.randn(16, 12)
    (z1, p1), (z2, p2) = model(x), model(x + 0.1 * torch.randn(16, 12))
    assert z1.shape == p1.shape == (16, 8)
    loss = criterion([z1, z2], torch.arange(16), [p1, p2])
    loss.backward()
    assert model.predictor.net[0].weight.grad.abs().sum() > 0 and model.backbone[1].weight.grad.abs().sum() > 0
