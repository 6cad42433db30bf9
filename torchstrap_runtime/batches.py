"""What the loop asks of a loader: an epoch's batches from a position, how many there are, a batch's size,
and closing an iterator left before its end."""

from __future__ import annotations

import itertools
from typing import Any, Iterable


def epoch_batches(loader: Iterable, epoch: int, start_batch: int) -> Iterable:
    """The batches of `epoch` from `start_batch` on: a seeded loader (`set_epoch`) replays them exactly,
    any other iterable is iterated from its start and the first `start_batch` batches skipped."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch, start_batch)
        return loader
    if start_batch:
        return itertools.islice(iter(loader), start_batch, None)
    return loader


def safe_len(loader: Any) -> int | None:
    """`len(loader)`, or None when it has no length."""
    try:
        return len(loader)
    except TypeError:
        return None


def limited_len(loader: Any, limit: int) -> int | None:
    """Batches of `loader` when at most `limit` are taken (0: all); None when neither is known."""
    total = safe_len(loader)
    if limit:
        return limit if total is None else min(total, limit)
    return total


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first element (0 when it has none)."""
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if hasattr(first, "__len__") else 0


def close_iterator(iterator: Any) -> None:
    """Stop an epoch iterator left before its end (FFCV's runs a loading thread)."""
    close = getattr(iterator, "close", None)
    if callable(close):
        close()
