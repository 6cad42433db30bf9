"""CoKe: clusters of Gaussian blobs, the minimal-size constraint, checkpoints, and SSL on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_blobs
from torch import nn

from torchstrap_runtime.criteria import CoKeMultiView, CoKeSingleView, build_criterion, knn_accuracy, nmi
from torchstrap_runtime.criteria.coke import lower_bounded_assignment


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids spin-waiting on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(sizes: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_blobs(n_samples=sizes, n_features=20, cluster_std=1.0, center_box=(-10, 10), random_state=seed)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(y)


def train_single_view(x: torch.Tensor, params: dict, epochs: int, seed: int, batch: int = 100) -> CoKeSingleView:
    """A linear encoder trained by CoKe (single view) over `epochs` passes of shuffled mini-batches."""
    torch.manual_seed(seed)
    encoder = nn.Linear(x.shape[1], 16)
    criterion = build_criterion("coke_single_view", {"embedding_size": 16, "num_samples": len(x), "seed": seed,
                                                     **params})
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = criterion(encoder(x[idx]), idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        criterion.end_epoch()
    assert torch.isfinite(loss)
    return criterion


def test_single_view_recovers_blobs_with_minimal_cluster_size():
    k, ratio = 5, 0.8
    # with min_size_ratio=0.5 this seed ends with two blobs merged and one split in halves (NMI 0.86);
    # a bound of 0.8 * N / K rules the halves out and the clustering recovers the blobs
    x, y = blobs([200] * k, seed=5)
    criterion = train_single_view(x, {"num_clusters": k, "min_size_ratio": ratio}, epochs=8, seed=5)
    labels = criterion.labels[0]  # the last epoch's online assignments of every sample
    assert (labels >= 0).all()
    assert nmi(y, labels) >= 0.9
    assert torch.bincount(labels, minlength=k).min() >= ratio * len(x) / k


def test_size_constraint_binds_on_imbalanced_blobs():
    """One big blob and two small ones: the duals must grow the small clusters to min_size_ratio * N / K."""
    sizes, k, ratio = [700, 150, 150], 3, 0.6
    bound = ratio * sum(sizes) / k  # 200 > 150
    x, _ = blobs(sizes, seed=1)
    with_duals = train_single_view(x, {"num_clusters": k, "min_size_ratio": ratio}, epochs=20, seed=1)
    assert torch.bincount(with_duals.labels[0], minlength=k).min() >= bound
    assert with_duals.duals(0).max() > 0
    without = train_single_view(x, {"num_clusters": k, "min_size_ratio": ratio, "dual_lr": 0.0}, epochs=20, seed=1)
    assert torch.bincount(without.labels[0], minlength=k).min() < bound  # plain k-means leaves them small


def test_lower_bounded_assignment():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(256, 10, generator=g) * 0.01
    scores[:, 3] += 1  # everyone prefers cluster 3
    labels = lower_bounded_assignment(scores, 12)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() == 12 and counts.sum() == 256
    assert int((labels != 3).sum()) == 9 * 12  # only as many rows move as the bound needs
    balanced = torch.randn(300, 3, generator=g)
    assert torch.equal(lower_bounded_assignment(balanced, 0), balanced.argmax(1))


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    x, _ = blobs([60, 60, 60], seed=0)
    params = {"embedding_size": 16, "num_samples": 180, "num_clusters": [3, 4], "seed": 0}
    torch.manual_seed(0)
    encoder = nn.Linear(20, 16)
    a = build_criterion("coke_single_view", params)
    idx = torch.arange(0, 90)
    a(encoder(x[idx]), idx)
    a.end_epoch()
    a(encoder(x[idx]), idx)
    keys = set(a.state_dict())
    assert {"centers_0", "centers_1", "duals_0", "duals_1", "labels", "center_sums_0", "initialized"} <= keys
    assert a.state_dict()["centers_1"].shape == (4, 16) and a.state_dict()["labels"].shape == (2, 180)
    torch.save(a.state_dict(), tmp_path / "criterion.pt")

    b = build_criterion("coke_single_view", params)
    b.load_state_dict(torch.load(tmp_path / "criterion.pt"))
    rest = torch.arange(90, 180)
    with torch.no_grad():
        loss_a, loss_b = a(encoder(x[rest]), rest), b(encoder(x[rest]), rest)
    assert torch.equal(loss_a, loss_b)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_multi_view_heads_and_symmetry():
    criterion = build_criterion("coke_multi_view", {"embedding_size": 8, "num_clusters": [4, 6], "seed": 0})
    assert criterion.input_kind == "views" and criterion.num_heads == 2
    g = torch.Generator().manual_seed(0)
    v1 = torch.randn(64, 8, generator=g).requires_grad_()
    v2 = (v1.detach() + 0.05 * torch.randn(64, 8, generator=g)).requires_grad_()
    loss = criterion([v1, v2])
    loss.backward()
    assert torch.isfinite(loss) and v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0
    three = build_criterion("coke_multi_view", {"embedding_size": 8, "num_clusters": 4})
    assert torch.isfinite(three([v1, v2, v2 + 0.1]))


@pytest.mark.parametrize("name,params,message", [
    ("coke_single_view", {"embedding_size": 8, "num_samples": 10, "min_size_ratio": 1.5}, "min_size_ratio"),
    ("coke_single_view", {"embedding_size": 8}, "num_samples"),
    ("coke_multi_view", {"embedding_size": 8, "num_clusters": 1}, "num_clusters"),
    ("coke_multi_view", {"embedding_size": 8, "num_clusters": [4, 5], "num_heads": 3}, "num_heads"),
    ("coke_multi_view", {"embedding_size": 8, "temperature": 0}, "temperature"),
    ("coke_multi_view", {"embedding_size": 8, "center_update": "sometimes"}, "center_update"),
    ("coke_multi_view", {"embedding_size": 8, "num_cluster": 4}, "did you mean 'num_clusters'"),
])
def test_bad_hyper_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_criterion(name, params)


def test_bad_calls_are_explained():
    single = build_criterion("coke_single_view", {"embedding_size": 8, "num_samples": 10})
    with pytest.raises(ValueError, match="indices"):
        single(torch.randn(4, 8))
    with pytest.raises(ValueError, match="outside"):
        single(torch.randn(4, 8), torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="one view"):
        single([torch.randn(4, 8), torch.randn(4, 8)], torch.arange(4))
    multi = build_criterion("coke_multi_view", {"embedding_size": 8})
    with pytest.raises(ValueError, match="2\\+ views"):
        multi([torch.randn(4, 8)])


def test_online_center_update_moves_centers_every_batch():
    criterion = CoKeMultiView(embedding_size=8, num_clusters=4, center_update="online", seed=0)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(32, 8, generator=g) for _ in range(2)]
    criterion(views)
    first = criterion.centers(0).clone()
    criterion([v + 1.0 for v in views])
    assert not torch.allclose(first, criterion.centers(0))
    assert torch.allclose(criterion.centers(0).norm(dim=1), torch.ones(4))


# ----------------------------------------------------------------------------- SSL on digits

def shift_scale_drop_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Augment [B, 8, 8] digits: random shift by up to one pixel, intensity scale, pixel dropout, noise."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (b,), generator=g), torch.randint(0, 3, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(b, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(b, 8, 8)
    out = padded[torch.arange(b)[:, None, None], rows, cols]
    out = out * (0.7 + 0.6 * torch.rand(b, 1, 1, generator=g))
    out = out * (torch.rand(out.shape, generator=g) > 0.15)
    return out + 0.1 * torch.randn(out.shape, generator=g)


def knn_of(encoder: nn.Module, x, y, train, test) -> float:
    encoder.eval()
    with torch.no_grad():
        acc = knn_accuracy(encoder(x[train]), y[train], encoder(x[test]), y[test], k=10)
    encoder.train()
    return acc


def test_multi_view_coke_on_digits_beats_a_random_encoder():
    """Two augmented views of sklearn digits, a small MLP with a BatchNorm'd 4-d output, CoKe for 40 epochs."""
    digits = load_digits()
    x, y = torch.tensor(digits.images, dtype=torch.float32) / 16, torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(),
                            nn.Linear(256, 4), nn.BatchNorm1d(4))
    random_acc = knn_of(encoder, x, y, train, test)
    criterion = build_criterion("coke_multi_view", {"embedding_size": 4, "num_clusters": 10, "seed": 0})
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        shuffled = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(shuffled) - 127, 128):
            batch = x[shuffled[i:i + 128]]
            loss = criterion([encoder(shift_scale_drop_noise(batch, g)) for _ in range(2)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        criterion.end_epoch()
    trained_acc = knn_of(encoder, x, y, train, test)
    print(f"kNN accuracy: random encoder {random_acc:.3f}, CoKe-trained {trained_acc:.3f}")
    assert trained_acc >= random_acc + 0.15, (random_acc, trained_acc)
    assert trained_acc >= 0.7, (random_acc, trained_acc)


def test_eval_mode_changes_no_state():
    g = torch.Generator().manual_seed(0)
    for criterion, args in [
        (CoKeSingleView(embedding_size=8, num_samples=64, num_clusters=4), (torch.randn(64, 8, generator=g), torch.arange(64))),
        (CoKeMultiView(embedding_size=8, num_clusters=4), ([torch.randn(64, 8, generator=g) for _ in range(2)],)),
    ]:
        criterion(*args)  # train mode: initialises and updates
        before = {k: v.clone() for k, v in criterion.state_dict().items()}
        criterion.eval()
        loss = criterion(*args)
        assert torch.isfinite(loss)
        for key, value in criterion.state_dict().items():
            assert torch.equal(value, before[key]), key
        if isinstance(criterion, CoKeSingleView):
            assert torch.isfinite(criterion(args[0]))  # validation samples need no indices


def test_center_features_ignores_a_common_offset():
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(64, 8, generator=g) for _ in range(2)]
    shifted = [v + 3.0 for v in views]  # every feature in one small cap of the sphere
    plain, moved = (CoKeMultiView(embedding_size=8, num_clusters=4, seed=0) for _ in range(2))
    assert torch.allclose(plain(views), moved(shifted), atol=1e-5)
    assert torch.allclose(plain.centers(0), moved.centers(0), atol=1e-5)
    raw = CoKeMultiView(embedding_size=8, num_clusters=4, seed=0, center_features=False)
    raw(shifted)
    assert not torch.allclose(raw.centers(0), moved.centers(0), atol=1e-2)
