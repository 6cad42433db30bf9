"""torchstrap.generator.merge: line-aligned conflicts are resolved, real ones keep copier's markers (real git merge-file)."""

from __future__ import annotations

import pytest

from torchstrap.generator.merge import merge

BASE = b"training:\n  epochs: 20\noptimizer:\n  name: sgd\n  lr: 0.1\n  momentum: 0.9\n  nesterov: false\n"


def test_adjacent_lines_changed_on_each_side_merge():
    ours = BASE.replace(b"lr: 0.1", b"lr: 0.05")
    theirs = BASE.replace(b"momentum: 0.9", b"momentum: 0.95").replace(b"name: sgd", b"name: adamw")
    merged, left = merge(ours, BASE, theirs)
    assert left == 0
    assert merged == BASE.replace(b"lr: 0.1", b"lr: 0.05").replace(b"momentum: 0.9", b"momentum: 0.95").replace(
        b"name: sgd", b"name: adamw")


def test_same_line_changed_differently_is_a_conflict_with_copier_markers():
    ours = BASE.replace(b"lr: 0.1", b"lr: 0.05")
    theirs = BASE.replace(b"lr: 0.1", b"lr: 0.4").replace(b"momentum: 0.9", b"momentum: 0.95")
    merged, left = merge(ours, BASE, theirs)
    assert left == 1
    assert (b"<<<<<<< before updating\n  lr: 0.05\n  momentum: 0.9\n=======\n  lr: 0.4\n  momentum: 0.95\n"
            b">>>>>>> after updating\n") in merged
    assert b"|||||||" not in merged and merged.startswith(b"training:\n  epochs: 20\n")


def test_insertions_at_the_same_place_stay_a_conflict():
    ours = BASE + b"mine:\n  x: 1\n"
    theirs = BASE + b"ema:\n  decay: 0.99\n"
    merged, left = merge(ours, BASE, theirs)
    assert left == 1 and b"mine:\n  x: 1\n=======\nema:\n  decay: 0.99\n" in merged


def test_clean_merges_and_identical_changes_pass_through():
    ours = BASE.replace(b"epochs: 20", b"epochs: 3")
    theirs = BASE.replace(b"nesterov: false", b"nesterov: true")
    assert merge(ours, BASE, theirs) == (ours.replace(b"nesterov: false", b"nesterov: true"), 0)
    same = BASE.replace(b"lr: 0.1", b"lr: 0.2")
    assert merge(same, BASE, same) == (same, 0)


def test_mixed_block_resolves_aligned_lines_only_when_every_line_is_one_sided():
    base = b"a\nb\nc\n"
    ours = b"A\nb\nC\n"  # changes a and c
    theirs = b"a\nB\nc\n"  # changes b: every line changed by at most one side
    assert merge(ours, base, theirs) == (b"A\nB\nC\n", 0)
    merged, left = merge(b"A\nb\nc\n", base, b"X\nB\nc\n")  # a changed by both
    assert left == 1 and merged.count(b"<<<<<<< before updating") == 1


def test_binary_contents_are_refused_not_mangled():
    png = b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256))
    with pytest.raises(ValueError, match="Cannot merge binary files"):
        merge(png + b"a", png, png + b"b")
