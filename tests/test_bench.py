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


def test_ssl_pipeline_views_of_the_pil_and_seeded_contenders(tiny_spec, monkeypatch):
    """bench_ssl_pipelines.py's PIL dataset and seeded loader deliver each view of DINO's and BYOL's pipelines,
    float32 NCHW at its size; the seeded loader gives the same batches when built again. (The quick run below
    checks every contender's batches while it measures.)"""
    import bench_ssl_pipelines as ssl

    monkeypatch.setattr(ssl, "BATCH", 4)
    jpegs, labels = datasets.read_jpegs(tiny_spec.path)
    for name, pipeline in ssl.PIPELINES.items():
        sizes = [v["size"] for v in pipeline["views"]]
        assert sizes == ([224, 224] + [96] * 6 if name == "dino" else [224, 224])
        views, label = ssl.PILViews(jpegs, labels, pipeline)[3]
        assert label == labels[3] and [tuple(v.shape) for v in views] == [(3, s, s) for s in sizes]
        assert all(v.dtype == torch.float32 for v in views)
        loads: list[float] = []
        assert ssl.epoch_rate(ssl.torchstrap_loader(tiny_spec, pipeline), len(sizes), loads)() > 0
        assert len(loads) == 1
        first, again = ([[x.clone() for x in batch] for batch in ssl.torchstrap_loader(tiny_spec, pipeline)]
                        for _ in range(2))  # whole epochs: no loader thread left running
        assert [tuple(x.shape) for x in first[0] if x.ndim == 4] == [(4, 3, s, s) for s in sizes]
        assert len(first) == 3 and all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
        first = first[0]
        assert not torch.equal(first[0], first[2])  # the two global views differ


def test_color_jitter_and_ssl_pipeline_rows_of_the_table():
    jitter = {"size": 224, "results": {"random order": {
        "contenders": [summary("per-pixel HSV kernel (before)", 1300.0, "µs/img"),
                       summary("vectorised kernel", 250.0, "µs/img")],
        "max_abs_difference": 0, "share_differing": 0.0}}}
    dino = {"label": "DINO multi-crop", "load_average_1min": [1.5, 2.5], "pil_resample": "BICUBIC",
            "upstream_missing_ops": "hue", "contenders": [summary("PIL DataLoader", 25.0),
                                                          summary("upstream FFCV", 40.0),
                                                          summary("torchstrap seeded", 50.0)]}
    results = {"color_jitter": jitter, "ssl_pipelines": {"batch_size": 64, "workers": 2, "results": {"dino": dino}}}
    [row] = run_all.color_jitter_rows(results)
    assert row[1].startswith("250 µs/img") and row[3] == "0.19×" and row[4:] == ["< 300 µs", "yes"]
    assert "the same bytes" in row[0]
    jitter["results"]["random order"]["contenders"][1] = summary("vectorised kernel", 320.0, "µs/img")
    assert run_all.color_jitter_rows(results)[0][-1] == "**no**"
    upstream_row, pil_row = run_all.ssl_pipeline_rows(results)
    assert "50.0 img/s" in upstream_row[1] and "20.0 ms/img" in upstream_row[1] and upstream_row[3] == "1.25×"
    assert "load average 1.5–2.5" in upstream_row[0] and "no hue" in upstream_row[0]
    assert pil_row[3] == "2.00×" and "bicubic" in pil_row[0]
    assert "not measured" in run_all.ssl_pipeline_rows({})[0][1]


def test_ssl_margin_rows_show_both_methods_margins_over_seeds():
    import ssl_margins

    def run(seed, probe, knn):
        return {"seed": seed, "seconds": {"trained": 30.0, "untrained": 28.0},
                "val_probe_top1": {"trained": probe[1], "untrained": probe[0], "margin": probe[1] - probe[0]},
                "val_knn_top1": {"trained": knn[1], "untrained": knn[0], "margin": knn[1] - knn[0]}}
    runs = [run(0, (0.5, 0.75), (0.85, 0.9)), run(1, (0.6, 0.7), (0.9, 0.88))]
    results = {"ssl_margins": {"epochs": 4, "recipes": {"byol": {"runs": runs, "summary": ssl_margins.summarize(runs)}}}}
    [row] = run_all.ssl_margin_rows(results)
    assert "`byol`" in row[0] and "4 epochs, 2 seeds, 30 s a run" in row[0]
    assert row[1] == "probe 0.725 [0.700–0.750], kNN 0.890 [0.880–0.900]"
    assert row[2] == "untrained: probe 0.550 [0.500–0.600], kNN 0.875 [0.850–0.900]"
    assert row[3] == "margin: probe +0.175 [+0.100–+0.250], kNN +0.015 [-0.020–+0.050]" and row[-1] == "yes"
    runs[0]["val_knn_top1"]["margin"] = -0.1
    results["ssl_margins"]["recipes"]["byol"]["summary"] = ssl_margins.summarize(runs)
    assert run_all.ssl_margin_rows(results)[0][-1] == "**no**"
    assert run_all.ssl_margin_rows({}) == []

def test_quick_ssl_pipelines_run_writes_both_pipelines():
    import subprocess

    proc = subprocess.run([sys.executable, str(BENCH / "bench_ssl_pipelines.py"), "--quick"], cwd=BENCH.parent,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((BENCH / "results" / "ssl_pipelines_quick.json").read_text())
    assert set(result["results"]) == {"dino", "byol"}
    for part in result["results"].values():
        medians = {c["name"]: c["median"] for c in part["contenders"]}
        assert set(medians) == {"PIL DataLoader", "upstream FFCV", "torchstrap seeded"} and min(medians.values()) > 0
        assert part["ratios"]["torchstrap / PIL DataLoader"] == pytest.approx(
            medians["torchstrap seeded"] / medians["PIL DataLoader"])
        assert part["ms_per_image"]["torchstrap seeded"] == pytest.approx(1000 / medians["torchstrap seeded"])
        assert len(part["load_average_1min"]) == result["rounds"] * 3


def test_color_jitter_bench_times_both_kernels_on_the_same_images():
    import bench_color_jitter as bench

    from torchstrap_runtime.data.color_jitter import RandomColorJitter, color_jitter_kernel

    images = bench.photo_crops(3)
    assert images.shape == (3, bench.SIZE, bench.SIZE, 3) and len({im.tobytes() for im in images}) == 3
    params = RandomColorJitter(0.4, 0.4, 0.2, 0.1, p=1.0, seed=0, random_order=True).params()
    for kernel in (color_jitter_kernel, bench.per_pixel_color_jitter_kernel):
        before = images.copy()
        assert bench.per_image(kernel, images, params)() > 0
        np.testing.assert_array_equal(images, before)  # each round jitters a copy
