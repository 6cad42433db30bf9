"""bench/bench_gpu.py's code path on the CPU (`--quick`), its FLOP count and GPU peaks, and the README rows
run_all.py makes of its results (figures, or "not measured" without a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_quick_run_compares_the_trainer_with_the_raw_loop_on_the_cpu():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--quick", "--no-compile", "--steps", "3"],
                          cwd=BENCH.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trainer / raw loop" in proc.stdout
    result = json.loads((BENCH / "results" / "gpu_quick.json").read_text())
    (row,) = result["rows"]
    assert row["model"] == "tiny" and row["device"] == "CPU" and not row["compile"]
    raw, ours = row["contenders"]
    assert (raw["name"], ours["name"]) == ("raw loop", "Trainer") and raw["median"] > 0 and ours["median"] > 0
    assert row["ratio"] == pytest.approx(ours["median"] / raw["median"])
    assert 0 <= row["data_wait_share"] < 1 and row["flops_per_image"] > 0 and row["share_of_peak"] is None


def test_training_flops_of_resnet50_are_three_forward_passes():
    import bench_gpu

    case = bench_gpu.Case("ResNet-50, 224 px", "resnet50", 224, 2)
    forward = 2 * 4.09e9  # torchvision's 4.09 G multiply-adds per 224 px image
    assert 2.8 * forward < bench_gpu.training_flops_per_image(case) < 3.05 * forward


def test_peak_throughput_by_gpu_name():
    import bench_gpu

    assert bench_gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_gpu.peak_tflops("NVIDIA L40S") == 362.0 and bench_gpu.peak_tflops("NVIDIA L4") == 121.0
    assert bench_gpu.peak_tflops("NVIDIA GeForce GTX 1080") is None


def test_readme_rows_say_not_measured_without_a_gpu_and_show_figures_with_one():
    import run_all

    rows = run_all.gpu_rows({"gpu": {"not_measured": "no CUDA GPU on the machine that ran the benchmarks"}})
    assert len(rows) == 4 and all(r[1].startswith("not measured (no CUDA GPU") for r in rows)
    assert [r[0].split(":")[1].split(",")[0].strip() for r in rows] == ["ResNet-50"] * 2 + ["ResNet-18"] * 2
    assert run_all.gpu_rows({})[0][1] == "not measured (bench_gpu.py has not run on a machine with a CUDA GPU)"
    contenders = [{"name": n, "unit": "img/s", "median": m, "min": m, "max": m} for n, m in (("raw loop", 3000.0),
                                                                                            ("Trainer", 2940.0))]
    row = {"label": "ResNet-50, 176 px, bf16 + channels_last", "batch": 256, "device": "NVIDIA H100 80GB HBM3",
           "contenders": contenders, "ratio": 0.98, "data_wait_share": 0.01, "peak_memory_mb": 20480.0,
           "share_of_peak": 0.4, "peak_bf16_tflops": 989.0}
    (measured,) = run_all.gpu_rows({"gpu": {"rows": [row]}})
    assert measured[0].startswith("GPU (NVIDIA H100 80GB HBM3): ResNet-50, 176 px") and "40.0% of the" in measured[0]
    assert measured[1:] == ["2,940 img/s [2,940–2,940]", "raw loop 3,000 img/s [3,000–3,000]", "0.980×", "≥ 0.97×",
                            "yes"]
