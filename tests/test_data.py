"""Reproducibility properties of torchstrap_runtime.data.Loader on a real digits .beton."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder

from torchstrap_runtime.data import (Loader, OrderOption, RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop,
                                     RandomTranslation, SimpleRGBImageDecoder, write_dataset)
from torchstrap_runtime.data.writers import digits_arrays

N = 600  # samples in the test dataset (first N digits, with their index stored as a field)


def colour_digits(n: int):
    """The first n digits, 32 px, painted with a random foreground and background colour each (so grayscale shows)."""
    images, labels = digits_arrays(32)
    ink = images[:n, :, :, :1] / 255.0
    fg, bg = np.random.default_rng(0).integers(0, 256, (2, n, 1, 1, 3))
    return np.round(ink * fg + (1 - ink) * bg).astype(np.uint8), labels[:n]


@pytest.fixture(scope="module")
def beton(tmp_path_factory) -> Path:
    images, labels = colour_digits(N)
    path = tmp_path_factory.mktemp("data") / "digits_index.beton"
    return write_dataset(path, images, labels, extra_fields={"index": np.arange(N)})


def pipelines(aug_seed, crop=True):
    """image: crop + translation + flip, all seeded by `aug_seed`; label off; index as numpy."""
    ops = [RandomResizedCrop((32, 32), seed=aug_seed)] if crop else [SimpleRGBImageDecoder()]
    ops += [RandomTranslation(padding=4, seed=aug_seed), RandomHorizontalFlip(seed=aug_seed)]
    return {"image": ops, "label": None, "index": [IntDecoder()]}


def make(beton, seed=0, aug_seed=1, batch_size=64, **kwargs) -> Loader:
    kwargs.setdefault("num_workers", 1)
    kwargs.setdefault("order", OrderOption.RANDOM)
    return Loader(beton, batch_size=batch_size, seed=seed, pipelines=pipelines(aug_seed), **kwargs)


def run_epoch(loader):
    """(dataset indices in the order seen, images in that order); batches copied out of FFCV's buffers."""
    order, images = [], []
    for image, index in loader:
        order.append(index.ravel().copy())
        images.append(image.copy())
    return np.concatenate(order), np.concatenate(images)


def by_index(order, images):
    """Images placed at their dataset index (others zero)."""
    out = np.zeros((N, *images.shape[1:]), dtype=images.dtype)
    out[order] = images
    return out


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(beton):
    """Seeds (0, 1), batch 64, 1 worker, drop_last: epochs 0 and 1 (the loader is reused by later tests)."""
    loader = make(beton)
    return loader, run_epoch(loader), run_epoch(loader)


def test_same_seeds_give_identical_batches_in_two_loaders(beton, reference):
    _, epoch0, epoch1 = reference
    other = make(beton)
    for (order_a, images_a), (order_b, images_b) in zip((epoch0, epoch1), (run_epoch(other), run_epoch(other))):
        np.testing.assert_array_equal(order_a, order_b)
        np.testing.assert_array_equal(images_a, images_b)


SUBPROCESS = """
import hashlib, sys, numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_data import make, run_epoch, digest
loader = make({beton!r})
print("DIGEST", digest(*run_epoch(loader)))
"""


def test_same_seeds_give_identical_batches_in_another_process(beton, reference):
    _, (order, images), _ = reference
    tests = Path(__file__).parent
    code = SUBPROCESS.format(root=str(tests.parent), tests=str(tests), beton=str(beton))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("DIGEST")][0]
    assert line.split()[1] == digest(order, images)


def test_golden_hash_of_seeded_batches(reference):
    """An accidental change of the random streams (or of an op) changes this hash: update it only on purpose."""
    _, (order0, images0), (order1, images1) = reference
    assert digest(order0[:128], images0[:128], order1[:64], images1[:64]) == GOLDEN_BATCHES


GOLDEN_BATCHES = "4781cb3ec6e4398d2390c58018d5bd5fd06ae53b0883f8963f348bffad589d83"


def test_augmentation_independent_of_batch_size_workers_drop_last_and_order(beton, reference):
    _, (order, images), _ = reference
    expected = by_index(order, images)
    seen = np.zeros(N, dtype=bool)
    seen[order] = True
    other = make(beton, seed=12345, batch_size=50, num_workers=2, drop_last=False)
    order_b, images_b = run_epoch(other)
    assert sorted(order_b) == list(range(N))  # drop_last=False: every sample once
    assert not np.array_equal(order_b[:len(order)], order)  # another order...
    np.testing.assert_array_equal(by_index(order_b, images_b)[seen], expected[seen])  # ...same augmentations
    sequential = make(beton, order=OrderOption.SEQUENTIAL, batch_size=7, num_workers=2, drop_last=False)
    order_c, images_c = run_epoch(sequential)
    np.testing.assert_array_equal(order_c, np.arange(N))
    np.testing.assert_array_equal(images_c[seen], expected[seen])


def test_epochs_differ(reference):
    _, (order0, images0), (order1, images1) = reference
    assert not np.array_equal(order0, order1)
    a, b = by_index(order0, images0), by_index(order1, images1)
    both = np.intersect1d(order0, order1)
    same = [np.array_equal(a[i], b[i]) for i in both]
    assert np.mean(same) < 0.05, f"{np.mean(same):.1%} of samples got the same augmentation in epochs 0 and 1"


def test_neighbouring_augmentation_seeds_give_unrelated_augmentations(beton, reference):
    _, (order, images), _ = reference
    neighbour = make(beton, aug_seed=2)  # reference uses aug seed 1
    order_b, images_b = run_epoch(neighbour)
    np.testing.assert_array_equal(order_b, order)  # same loader seed: same order
    same = [np.array_equal(x, y) for x, y in zip(images, images_b)]
    assert np.mean(same) < 0.05


@pytest.mark.parametrize("loader_seed, aug_seed", [(0, 1), (0, None), (None, 1), (None, None)])
def test_the_four_seed_combinations(beton, reference, loader_seed, aug_seed):
    """Two loaders built alike: order fixed iff loader seed set, per-sample augmentation fixed iff aug seed set."""
    _, (order_a, images_a), _ = reference
    first = make(beton, seed=loader_seed, aug_seed=aug_seed)
    second = make(beton, seed=loader_seed, aug_seed=aug_seed)
    runs = [run_epoch(first), run_epoch(second)]
    if loader_seed is not None and aug_seed is not None:  # reference has seeds (0, 1)
        runs.append((order_a, images_a))
    (o1, i1), (o2, i2) = runs[0], runs[1]
    assert np.array_equal(o1, o2) == (loader_seed is not None)
    a, b = by_index(o1, i1), by_index(o2, i2)
    common = np.intersect1d(o1, o2)
    same = np.mean([np.array_equal(a[i], b[i]) for i in common])
    if aug_seed is not None:
        assert same == 1.0
    else:
        assert same < 0.05
        assert first.augmentation_seeds != second.augmentation_seeds
    assert (first.seed == second.seed) == (loader_seed is not None)


def test_exact_resume_from_epoch_and_batch(beton, reference):
    loader, _, (order1, images1) = reference
    resumed = make(beton, start_epoch=1, start_batch=3)
    assert len(resumed) == len(loader) == N // 64
    order, images = run_epoch(resumed)
    np.testing.assert_array_equal(order, order1[3 * 64:])
    np.testing.assert_array_equal(images, images1[3 * 64:])
    resumed.set_epoch(1, start_batch=len(resumed) - 1)  # set_epoch on an existing loader, last batch only
    order, images = run_epoch(resumed)
    np.testing.assert_array_equal(images, images1[-64:])
    order, images = run_epoch(resumed)  # then epochs count up from there: epoch 2, in full
    assert resumed.epoch == 2 and len(order) == len(loader) * 64
    loader.set_epoch(2)
    np.testing.assert_array_equal(run_epoch(loader)[1], images)


def test_sharding_is_disjoint_and_covers_the_dataset(beton):
    def shard(rank, drop_last):
        loader = Loader(beton, batch_size=32, num_workers=1, order=OrderOption.RANDOM, seed=3, rank=rank, world_size=3,
                        drop_last=drop_last,
                        pipelines={"image": None, "label": None, "index": [IntDecoder()]})
        return [np.concatenate([b[0].ravel().copy() for b in loader]) for _ in range(2)], len(loader)

    shards = [shard(rank, drop_last=False) for rank in range(3)]
    for epoch in range(2):
        parts = [s[0][epoch] for s in shards]
        union = np.concatenate(parts)
        assert len(union) == N and sorted(union) == list(range(N)), "shards must partition the dataset"
    assert not np.array_equal(shards[0][0][0], shards[0][0][1])  # reshuffled each epoch
    lengths = {shard(rank, drop_last=True)[1] for rank in range(3)}
    assert lengths == {(N // 3) // 32}, "with drop_last every rank yields the same number of batches"


def test_multiview_with_shared_grayscale_seed(beton):
    """Three views of the stored 'image': view 1 and 2 share one grayscale realization, view 3 has its own."""
    pipes = {
        "image": [RandomResizedCrop((32, 32), seed=10), RandomGrayscale(p=0.5, seed=7)],
        "label": None,
        "index": [IntDecoder()],
        "view2": [RandomResizedCrop((32, 32), seed=20), RandomGrayscale(p=0.5, seed=7)],
        "view3": [RandomResizedCrop((32, 32), seed=30), RandomGrayscale(p=0.5, seed=8)],
    }
    loader = Loader(beton, batch_size=100, num_workers=2, order=OrderOption.RANDOM, seed=0, pipelines=pipes,
                    custom_field_mapper={"view2": "image", "view3": "image"})
    view1, index, view2, view3 = (np.concatenate(x) for x in zip(*[[a.copy() for a in b] for b in loader]))
    assert view1.shape == view2.shape == view3.shape == (len(index), 32, 32, 3)

    def is_gray(views):
        return np.array([np.array_equal(v[..., 0], v[..., 1]) and np.array_equal(v[..., 1], v[..., 2])
                         for v in views])

    g1, g2, g3 = is_gray(view1), is_gray(view2), is_gray(view3)
    assert 0.4 < g1.mean() < 0.6 and 0.4 < g3.mean() < 0.6
    np.testing.assert_array_equal(g1, g2)  # shared seed: the same samples are converted in views 1 and 2
    assert 0.35 < np.mean(g1 == g3) < 0.65  # own seed: unrelated decisions
    assert np.mean([np.array_equal(a, b) for a, b in zip(view1, view2)]) < 0.05  # different crops

def test_loader_errors_name_the_problem(beton, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.beton"):
        Loader(tmp_path / "missing.beton", batch_size=8)
    bad = tmp_path / "bad.beton"
    bad.write_bytes(b"not a beton at all" * 10)
    with pytest.raises(ValueError, match="bad.beton"):
        Loader(bad, batch_size=8)
    with pytest.raises(ValueError, match="'nope'"):
        Loader(beton, batch_size=8, pipelines={"v2": [SimpleRGBImageDecoder()]}, custom_field_mapper={"v2": "nope"})
    with pytest.raises(ValueError, match="seed"):
        Loader(beton, batch_size=8, seed=-1)
    with pytest.raises(ValueError, match="start_batch"):
        make(beton, start_batch=10_000)


def test_process_cache_gives_the_same_batches(beton, reference):
    """os_cache=False (FFCV's process cache, other decoder code path) changes nothing."""
    _, (order, images), _ = reference
    np.testing.assert_array_equal(run_epoch(make(beton, os_cache=False))[1], images)


def test_distributed_takes_rank_and_world_size_from_torch_distributed(beton, tmp_path):
    import torch.distributed as dist

    with pytest.raises(ValueError, match="torch.distributed"):
        Loader(beton, batch_size=8, distributed=True, pipelines={"image": None})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = Loader(beton, batch_size=8, distributed=True, pipelines={"image": None})
        assert (loader.rank, loader.world_size) == (0, 1) and len(loader) == N // 8
    finally:
        dist.destroy_process_group()
