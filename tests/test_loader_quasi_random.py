"""QUASI_RANDOM order for datasets larger than RAM (`data.os_cache false`): seeded by (seed, epoch),
local in the file's pages, sharded across ranks with every sample once per epoch, and resumed exactly."""

from __future__ import annotations

import numpy as np
import pytest
from ffcv.fields import IntField, NDArrayField
from ffcv.fields.basics import IntDecoder
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter

from torchstrap_runtime.data import Loader, OrderOption
from torchstrap_runtime.data.loader import quasi_random_order

SAMPLES_PER_PAGE = 20
N = 24 * SAMPLES_PER_PAGE + 7  # 25 pages of 2 MiB, the last one partly filled
LABELS = {"data": None, "label": [IntDecoder()]}  # the pages are still read; only the labels are decoded


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """N samples of 100 kB (20 to a 2 MiB page) labelled with their index."""
    path = str(tmp_path_factory.mktemp("quasi") / "pages.beton")
    size = MIN_PAGE_SIZE // SAMPLES_PER_PAGE - 1024  # room for FFCV's per-sample overhead
    blob = np.zeros(size, dtype=np.uint8)
    writer = DatasetWriter(path, {"data": NDArrayField(np.dtype("uint8"), (size,)), "label": IntField()},
                           page_size=MIN_PAGE_SIZE, num_workers=1)
    writer.from_indexed_dataset([(blob, i) for i in range(N)])
    return path


def quasi(beton, **kwargs) -> Loader:
    args = dict(batch_size=8, num_workers=1, order=OrderOption.QUASI_RANDOM, os_cache=False, seed=11,
                quasi_random_window=3, pipelines=LABELS)
    return Loader(beton, **{**args, **kwargs})


def epoch_labels(loader) -> list:
    return [int(x) for (label,) in loader for x in np.asarray(label).ravel()]


def test_the_file_has_the_pages_the_tests_assume(beton):
    loader = quasi(beton)
    loader.epoch_order(0)  # reads the page of each sample
    counts = np.bincount(loader.sample_pages - loader.sample_pages.min())
    assert len(counts) == 25 and counts.max() <= SAMPLES_PER_PAGE + 1, counts


def test_seeded_every_sample_once_and_a_new_order_each_epoch(beton):
    first, again = quasi(beton, drop_last=False), quasi(beton, drop_last=False)
    epoch0, epoch1 = epoch_labels(first), epoch_labels(first)
    assert epoch0 == epoch_labels(again), "same seed, same order"
    assert sorted(epoch0) == sorted(epoch1) == list(range(N)), "every sample once per epoch"
    assert epoch0 != epoch1, "each epoch its own order"
    assert epoch0 != epoch_labels(quasi(beton, seed=12, drop_last=False)), "another seed, another order"
    assert epoch0 != sorted(epoch0)


def test_consecutive_samples_come_from_few_pages_and_memory_stays_at_a_window(beton):
    loader = quasi(beton, drop_last=False)
    pages = loader.sample_pages
    quasi_order = loader.epoch_order(0)
    random_order = np.random.default_rng(0).permutation(N)

    def pages_per_run(order, run=40):
        return np.mean([len(set(pages[order[i:i + run]])) for i in range(0, len(order) - run, run)])

    # 40 consecutive samples: within a window of 3 pages (4 to 6 across a boundary); random: most of the 25
    assert pages_per_run(quasi_order) <= 5 < 15 <= pages_per_run(random_order)

    def pages_held(order) -> int:  # FFCV's process cache (os_cache=False) loads and frees pages by this schedule
        loader = quasi(beton, drop_last=False)
        loader.epoch_order = lambda epoch: order
        iterator = iter(loader)
        for _ in iterator:
            pass
        return iterator.memory_context.schedule.num_slots

    quasi_held, random_held = pages_held(quasi_order), pages_held(random_order)
    print(f"pages per 40 samples: quasi {pages_per_run(quasi_order):.1f}, random {pages_per_run(random_order):.1f};"
          f" pages held: quasi {quasi_held}, random {random_held}")
    assert quasi_held <= 3 * 3 and random_held >= 24, (quasi_held, random_held)


def test_two_ranks_split_the_epoch_evenly_and_read_their_own_pages(beton):
    for drop_last in (False, True):
        shards = [quasi(beton, rank=rank, world_size=2, drop_last=drop_last) for rank in range(2)]
        labels = [epoch_labels(shard) for shard in shards]
        assert len(labels[0]) == len(labels[1]) == len(shards[0]) * 8 - (0 if drop_last else 4)
        union = labels[0] + labels[1]
        if drop_last:
            assert len(set(union)) == len(union) >= N - 2 * 8, "no sample twice, at most a batch per rank dropped"
        else:
            real = [label for shard, ls in zip(shards, labels)
                    for b in range(len(shard)) for label in ls[b * 8:b * 8 + shard.real_samples(b)]]
            assert sorted(real) == list(range(N)), "the union is the epoch, padding counted once"
            assert len(labels[0]) == -(-N // 2)
        whole = quasi(beton, drop_last=False).epoch_order(0)
        assert np.array_equal(shards[0].epoch_order(0), whole[:len(shards[0].epoch_order(0))]), \
            "the shards are blocks of the single-process order"
        pages = [set(shard.sample_pages[shard.epoch_order(0)]) for shard in shards]
        assert len(pages[0] & pages[1]) <= 3, "ranks share at most the window cut between them"


def test_mid_epoch_resume_replays_the_same_batches(beton):
    full = quasi(beton)
    full.set_epoch(2)
    batches = [np.asarray(label).ravel().tolist() for (label,) in full]
    resumed = quasi(beton, start_epoch=2, start_batch=5)
    assert [np.asarray(label).ravel().tolist() for (label,) in resumed] == batches[5:]
    shard = quasi(beton, rank=1, world_size=2, drop_last=False)
    shard.set_epoch(1)
    whole = [np.asarray(label).ravel().tolist() for (label,) in shard]
    shard.set_epoch(1, start_batch=3)
    assert [np.asarray(label).ravel().tolist() for (label,) in shard] == whole[3:]


def test_seed_none_draws_a_seed_recorded_like_the_others(beton):
    first, second = quasi(beton, seed=None), quasi(beton, seed=None)
    assert first.seed != second.seed and max(first.seed, second.seed) >= 2**31, "fresh 63-bit seeds"
    state = first.seed_state()
    assert state["order"] == first.seed
    replay = quasi(beton, seed=None)
    replay.load_seed_state(state)
    assert epoch_labels(replay) == epoch_labels(first)
    with pytest.raises(ValueError, match="explicit order seed"):  # ranks must agree on the order
        quasi(beton, seed=None, rank=0, world_size=2)


def test_labels_only_file_and_a_subset_of_indices(beton, tmp_path):
    path = str(tmp_path / "labels.beton")
    DatasetWriter(path, {"label": IntField()}, num_workers=1).from_indexed_dataset([(i,) for i in range(50)])
    loader = Loader(path, batch_size=4, num_workers=1, order=OrderOption.QUASI_RANDOM, seed=1, drop_last=False,
                    pipelines={"label": [IntDecoder()]})
    assert sorted(epoch_labels(loader)) == list(range(50))
    subset = quasi(beton, indices=np.arange(0, N, 3), drop_last=False)
    assert sorted(epoch_labels(subset)) == list(range(0, N, 3))
    order = quasi_random_order(np.arange(10), np.zeros(10, dtype=np.int64), seed=1, epoch=0, window=1)
    assert sorted(order.tolist()) == list(range(10))
