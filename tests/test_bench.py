"""The benchmark scripts' own machinery: interleaving, datasets, the PIL baseline, the README table.

The benchmarks themselves are run by `make bench`; these tests check, on small real inputs, that what they
measure is what they claim (same JPEG bytes, uint8 NCHW batches, a log line per step, the README block).
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
try:
    import common
    import datasets
    import run_all
finally:
    sys.path.remove(str(BENCH))  # each test that imports more of bench/ adds it back (fixture below)


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_interleave_alternates_order_and_keeps_every_value():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name) or float(len(calls))) for name in "ABC"}
    values = common.interleave(contenders, rounds=3, verbose=False)
    assert calls == list("ABCCBAABC")
    assert values == {"A": [1.0, 6.0, 7.0], "B": [2.0, 5.0, 8.0], "C": [3.0, 4.0, 9.0]}
    s = common.Summary("A", "x", values["A"])
    assert (s.median, s.low, s.high) == (6.0, 1.0, 7.0)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> datasets.Spec:
    """A real 12-image .beton, written by FFCV's writer from the benchmark's image generator."""
    spec = datasets.Spec("tiny", 12, 40, 56, folder=tmp_path_factory.mktemp("bench_data"))
    datasets.ensure(spec)
    return spec


@pytest.fixture(scope="module")
def tiny_beton(tiny_spec) -> Path:
    return tiny_spec.path


def test_read_jpegs_gives_the_stored_images(tiny_beton):
    from PIL import Image

    images, labels = datasets.read_jpegs(tiny_beton)
    assert len(images) == 12 and labels == [i % 10 for i in range(12)]
    sizes = set()
    for jpeg in images:
        assert jpeg[:2] == b"\xff\xd8" and jpeg.rstrip(b"\0")[-2:] == b"\xff\xd9"  # whole JPEG streams
        image = Image.open(io.BytesIO(jpeg))
        assert 40 <= image.width <= 56 and 40 <= image.height <= 56
        sizes.add(image.size)
    assert len(sizes) > 1  # variable sizes, like the 256 px set


def test_pil_baseline_delivers_uint8_nchw_crops(tiny_beton):
    import bench_loader

    images, labels = datasets.read_jpegs(tiny_beton)
    dataset = bench_loader.PILDataset(images, labels, crop=32)
    batch = bench_loader.collate_nchw([dataset[i] for i in range(4)])
    assert batch[0].shape == (4, 3, 32, 32) and batch[0].dtype == torch.uint8
    assert batch[1].tolist() == labels[:4]
    np.random.seed(0)
    for _ in range(200):
        top, left, h, w = bench_loader.random_crop_box(50, 41)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 41 and h > 0 and w > 0


def test_decode_ceiling_decodes_every_image(tiny_spec):
    import bench_loader

    assert bench_loader.decode_ceiling(tiny_spec)() > 0


def test_raw_loop_and_trainer_both_log_every_step(tmp_path):
    import bench_trainer

    torch.set_num_threads(1)
    batches = bench_trainer.make_batches(6)
    assert bench_trainer.raw_loop(batches, tmp_path / "raw") > 0
    assert (tmp_path / "raw" / "log.jsonl").read_text().count("\n") == 6
    bench_trainer.configure(tmp_path / "runs")
    assert bench_trainer.trainer_run(bench_trainer.trainer_class(progress=False), batches) > 0
    [run] = list((tmp_path / "runs").iterdir())
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum(1 for r in lines if r.get("kind") == "train_step") == 6


def summary(name: str, median: float, unit: str = "img/s") -> dict:
    return {"name": name, "unit": unit, "median": median, "min": median * 0.9, "max": median * 1.1,
            "values": [median]}


def test_readme_block_is_replaced_in_place_and_nothing_else(tmp_path):
    results = {"loader_256px": {"machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11", "memory_gib": 8},
                                "date_utc": "2026-01-01 00:00 UTC", "decode_ceiling_2core": 5000.0,
                                "contenders": [summary("torchstrap seeded", 2900.0), summary("upstream FFCV", 2800.0),
                                               summary("PIL DataLoader", 950.0),
                                               summary("decode only, 1 core", 2500.0)]}}
    text = run_all.table(results)
    assert "Test CPU, 2 cores" in text
    row = next(line for line in text.splitlines() if "vs upstream FFCV" in line and "256 px" in line)
    assert "2,900 img/s [2,610–3,190]" in row and "1.04×" in row and "| yes |" in row
    pil_row = next(line for line in text.splitlines() if "vs PIL DataLoader" in line and "256 px" in line)
    assert "3.05×" in pil_row and "| yes |" in pil_row
    assert "not measured" in text  # the benchmarks without results say so

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{run_all.START}\nold table\n{run_all.END}\nafter\n")
    assert run_all.write_table(text, tmp_path / "table.md", readme)
    content = readme.read_text()
    assert content.startswith("# title\n\nbefore\n") and content.endswith(f"{run_all.END}\nafter\n")
    assert "old table" not in content and text in content
    assert run_all.write_table(text, tmp_path / "table.md", readme)  # idempotent
    assert readme.read_text() == content

    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    assert not run_all.write_table(text, tmp_path / "table2.md", bare)
    assert bare.read_text() == "no markers\n" and (tmp_path / "table2.md").read_text() == text
