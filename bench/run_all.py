"""Run every benchmark, then regenerate the performance table of README.md from bench/results/*.json.

The table goes between `<!-- bench:start -->` and `<!-- bench:end -->` in README.md (and always to
bench/results/README_table.md). `--quick` runs short rounds and writes only README_table_quick.md;
`--table-only` skips the runs and rebuilds the table from the JSON already there. How the figures are
taken, and what the code does to be fast, is written by hand in docs/performance.md.

    python bench/run_all.py [--quick] [--table-only] [--only loader startup trainer logging generator demo gpu ...]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH_DIR, REPO_DIR, RESULTS_DIR, fmt, numba_env

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SCRIPTS = {"loader": "bench_loader.py", "startup": "bench_startup.py", "trainer": "bench_trainer.py",
           "logging": "bench_logging.py", "generator": "bench_generator.py", "demo": "bench_demo.py",
           "runs": "bench_runs.py", "mirrors": "bench_mirrors.py", "coke_pipeline": "bench_coke_pipeline.py",
           "color_jitter": "bench_color_jitter.py", "ssl_pipelines": "bench_ssl_pipelines.py", "gpu": "bench_gpu.py",
           "ssl_margins": "ssl_margins.py"}


def run_benchmarks(names: list[str], quick: bool) -> dict[str, str]:
    """Run each benchmark script in its own process; return {name: 'ok' | why it did not run}."""
    status = {}
    for name in names:
        script = BENCH_DIR / SCRIPTS[name]
        if not script.exists():
            status[name] = f"{script.name} does not exist"
            print(f"--- {name}: skipped ({status[name]})")
            continue
        print(f"--- {name}: {script.name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)] + ["--quick"] * quick, cwd=REPO_DIR, env=numba_env())
        status[name] = "ok" if proc.returncode == 0 else f"failed with exit code {proc.returncode}"
        print(f"--- {name}: {status[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    return status


# ---------------------------------------------------------------- reading results
Results = dict[str, dict]  # {"loader_256px": the JSON of bench/results/loader_256px.json, ...}


def load_results(results_dir: Path, quick: bool) -> Results:
    """Every results JSON of one kind (full or quick), by benchmark name."""
    suffix = "_quick" if quick else ""
    results = {}
    for path in sorted(results_dir.glob(f"*{suffix}.json")):
        name = path.stem[: len(path.stem) - len(suffix)] if suffix else path.stem
        if not quick and name.endswith("_quick"):
            continue
        results[name] = json.loads(path.read_text())
    return results


def contender(result: dict | None, name: str, key: str = "contenders") -> dict | None:
    if not result:
        return None
    return next((c for c in result.get(key, []) if c["name"] == name), None)


def cell(c: dict | None, unit: str | None = None) -> str:
    """'median unit [min–max]' of a contender summary, or 'not measured'."""
    if c is None or c["median"] is None or (isinstance(c["median"], float) and math.isnan(c["median"])):
        return "not measured"
    unit = c["unit"] if unit is None else unit
    return f"{fmt(c['median'])} {unit} [{fmt(c['min'])}–{fmt(c['max'])}]".replace("  ", " ")


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None or math.isnan(value):
        return "—"
    ok = value >= target if higher_is_better else value <= target
    return "yes" if ok else "**no**"


def ratio(a: dict | None, b: dict | None) -> float | None:
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def rtext(r: float | None, digits: int = 2) -> str:
    return "—" if r is None or math.isnan(r) else f"{r:.{digits}f}×"


# ---------------------------------------------------------------- the table
def loader_rows(results: Results) -> list[list[str]]:
    rows = []
    for size in ("256px", "32px"):
        res = results.get(f"loader_{size}")
        label = {"256px": "loader, 256 px JPEG, RandomResizedCrop 224 + flip, batch 64",
                 "32px": "loader, 32 px JPEG, flip, batch 256"}[size]
        ours, ffcv, pil = (contender(res, n) for n in ("torchstrap seeded", "upstream FFCV", "PIL DataLoader"))
        one_core = contender(res, "decode only, 1 core")
        r1, r2 = ratio(ours, ffcv), ratio(ours, pil)
        rows.append([f"{label}, 2 workers: seeded pipeline vs upstream FFCV (same ops, unseeded)", cell(ours),
                     cell(ffcv), rtext(r1), "≥ 0.95×", verdict(r1, 0.95)])
        rows.append([f"{label}: vs PIL DataLoader (same images and augmentations, 2 workers)", cell(ours), cell(pil),
                     rtext(r2), "≥ 3×", verdict(r2, 3.0)])
        off, ffcv_off = contender(res, "torchstrap seeded, os_cache off"), contender(res, "upstream FFCV, os_cache off")
        if off:
            r3 = ratio(off, ours)
            rows.append([f"{label}: os_cache off (pages read by the loader, QUASI_RANDOM) vs os_cache on", cell(off),
                         cell(ours), rtext(r3), "reported", "—"])
            rows.append([f"{label}: os_cache off, ours (seeded, shardable) vs upstream FFCV's QUASI_RANDOM",
                         cell(off), cell(ffcv_off), rtext(ratio(off, ffcv_off)), "≥ 0.95×",
                         verdict(ratio(off, ffcv_off), 0.95)])
        if res and one_core:
            ceiling = res["decode_ceiling_2core"]
            shares = ", ".join(f"{n.split()[0]} {c['median'] / ceiling:.0%}" for n in
                               ("torchstrap seeded", "upstream FFCV", "PIL DataLoader") if (c := contender(res, n)))
            rows.append([f"{label}: share of the 2-core decode ceiling (libjpeg-turbo alone ×2)", shares,
                         f"{fmt(ceiling)} img/s", "—", "reported", "—"])
    return rows


def startup_rows(results: Results) -> list[list[str]]:
    res = results.get("startup")
    rows = []
    for size in ("256px", "32px"):
        part = (res or {}).get("results", {}).get(size)
        first = contender(part, "torchstrap, first launch")
        second = contender(part, "torchstrap, second launch")
        ffcv, pil = contender(part, "upstream FFCV"), contender(part, "PIL DataLoader")
        phases = (part or {}).get("phases_median", {})

        def split(name: str) -> str:
            return phase_split(phases.get(name), "loader built", "first batch")

        others = f"upstream FFCV {cell(ffcv)}{split('upstream FFCV')}; PIL DataLoader {cell(pil)}"
        rows.append([f"python start → first batch, {size[:-2]} px, second launch (warm numba cache)",
                     cell(second) + split("torchstrap, second launch"), others, rtext(ratio(second, ffcv)), "≤ 3 s",
                     verdict(second["median"] if second else None, 3.0, higher_is_better=False)])
        rows.append([f"python start → first batch, {size[:-2]} px, first launch (empty numba cache)",
                     cell(first) + split("torchstrap, first launch"), others, rtext(ratio(first, ffcv)),
                     "reported", "—"])
    return rows + experiment_startup_rows((res or {}).get("results", {}).get("experiment"))


def phase_split(p: dict | None, built: str, first: str) -> str:
    """" (imports X s, <built> +Y s, <first> +Z s)" from a start-up measurement's median phase times."""
    if not p:
        return ""
    return (f" (imports {p['imported']:.1f} s, {built} +{p['built'] - p['imported']:.1f} s, "
            f"{first} +{p['first'] - p['built']:.1f} s)")


def experiment_startup_rows(part: dict | None) -> list[list[str]]:
    """The default experiment (digits, MLP) from `python -m <package>.train` to its first training step."""
    second, first = contender(part, "second experiment"), contender(part, "first experiment")
    compile_at_new = contender(part, "compile at torchstrap new")
    phases = (part or {}).get("phases_median", {})

    def split(name: str) -> str:
        return phase_split(phases.get(name), "trainer and loaders built", "first batch and step")

    return [["default experiment: python start → first training step, a second experiment (kernels compiled once "
             "per installation)", cell(second) + split("second experiment"), f"first experiment {cell(first)}",
             "—", "≤ 5 s", verdict(second["median"] if second else None, 5.0, higher_is_better=False)],
            ["the first experiment after installation: `torchstrap new` compiles the kernels (empty cache)",
             cell(compile_at_new), "once per installation", "—", "reported", "—"]]


def trainer_rows(results: Results) -> list[list[str]]:
    res = results.get("trainer")
    raw, ours = contender(res, "raw loop"), contender(res, "Trainer, log() each step")
    bar = contender(res, "Trainer, log() each step + progress bar")
    cpu_ours, cpu_raw = contender(res, "Trainer, log() each step", "cpu_time"), contender(res, "raw loop", "cpu_time")
    r, rc = ratio(ours, raw), ratio(cpu_ours, cpu_raw)
    rows = [["Trainer overhead, MLP 784-256-10, batch 256, 1 thread, log() each step (wall clock)", cell(ours),
             f"raw loop {cell(raw)}", rtext(r, 3), "≥ 0.98×", verdict(r, 0.98)],
            ["the same, steps per CPU-second of the process (insensitive to other processes)", cell(cpu_ours),
             f"raw loop {cell(cpu_raw)}", rtext(rc, 3), "≥ 0.98×", verdict(rc, 0.98)]]
    if bar:
        rows.append(["the same with the default tqdm progress bar on", cell(bar), f"raw loop {cell(raw)}",
                     rtext(ratio(bar, raw), 3), "—", "—"])
    return rows


def logging_rows(results: Results) -> list[list[str]]:
    res = results.get("logging")
    h5 = contender(res, "HDF5Logger.log (log_hdf5)", "calls")
    npy, pt = contender(res, "np.save per step", "calls"), contender(res, "torch.save per step", "calls")
    r = ratio(h5, pt)
    loop = (res or {}).get("loop", [])
    cpu = (res or {}).get("loop_cpu_time", [])
    rows = [["`log_hdf5` of a 256×256 float32 array, cost per call", cell(h5),
             f"torch.save {cell(pt)}; np.save {cell(npy)}", rtext(r), "< 1× torch.save",
             verdict(r, 1.0, higher_is_better=False)]]
    if len(loop) >= 2:
        rl = loop[1]["median"] / loop[0]["median"]
        rows.append(["training loop (MLP) with `log_hdf5` each step vs without (wall clock)", cell(loop[1]),
                     cell(loop[0]), rtext(rl), "≥ ~1× (no slower)", verdict(rl, 0.99)])
    if len(loop) == 3:
        rows.append(["the same loop copying the 256×256 array each step and nothing else (the floor of a logger "
                     "that keeps the values)", cell(loop[2]), cell(loop[0]),
                     rtext(loop[2]["median"] / loop[0]["median"]), "—", "—"])
    if len(cpu) >= 2:
        rc = cpu[1]["median"] / cpu[0]["median"]
        rows.append(["the same, steps per CPU-second (the writer thread's CPU time included)", cell(cpu[1]),
                     cell(cpu[0]), rtext(rc), "—", "—"])
    heavy = (res or {}).get("loop_heavy", [])
    if len(heavy) == 2:
        rh = heavy[1]["median"] / heavy[0]["median"]
        rows.append([f"the same loop with batch {res.get('heavy_batch')} (a longer step, closer to real models), "
                     "wall clock", cell(heavy[1]), cell(heavy[0]), rtext(rh), "≥ ~1× (no slower)",
                     verdict(rh, 0.99)])
    return rows


def generator_rows(results: Results) -> list[list[str]]:
    """bench_generator.py's figures: {"results": {"torchstrap new": {"median_s", "min_s", "max_s", "target_s"}}}."""
    res = results.get("generator")
    figures = (res or {}).get("results") or {}
    if not figures:
        return [["`torchstrap new` / `torchstrap update`, default experiment", "not measured (no "
                 "bench/results/generator.json from bench_generator.py)", "—", "—", "≤ 2 s / ≤ 5 s", "—"]]
    rows = []
    for name, f in figures.items():
        c = {"median": f["median_s"], "min": f["min_s"], "max": f["max_s"], "unit": "s"}
        target = f.get("target_s")
        rows.append([f"`{name}` on the default experiment", cell(c), "—", "—",
                     f"≤ {target:g} s" if target else "reported",
                     verdict(c["median"], target, higher_is_better=False) if target else "—"])
    return rows


def demo_rows(results: Results) -> list[list[str]]:
    res = results.get("demo")
    if not res or res.get("not_measured"):
        why = (res or {}).get("not_measured", "bench_demo.py has not run")
        return [["`make demo` end to end (set-up done)", f"not measured ({why})", "—", "—", "reported", "—"]]
    wall = contender(res, "make demo, whole command")
    to_target = next((c for c in res["contenders"] if c["name"].startswith("seconds from start")), None)
    acc = contender(res, "final val top-1")
    return [["`make demo` end to end (set-up done, `--no-install`): seconds to ≥ 95 % digits accuracy",
             cell(to_target), f"whole command (all epochs) {cell(wall)}; final accuracy {cell(acc, '')}", "—",
             "reported", "—"]]


def runs_rows(results: Results) -> list[list[str]]:
    """bench_runs.py (`torchstrap runs` over many run folders) and bench_mirrors.py (cost of each log mirror)."""
    rows = []
    res = results.get("runs")
    if res:
        command = contender(res, "torchstrap runs (whole command)", "results")
        plain = contender(res, "plain json.load of every file", "results")
        r = ratio(command, plain)
        rows.append([f"`torchstrap runs` over {res['runs']} run folders ({res['log_mib']} MiB of logs), whole command; "
                     f"{res.get('command_cpu_s', '?')} s of CPU", cell(command), f"json.load of every file {cell(plain)}",
                     rtext(r), "< 2 s", verdict(command["median"] if command else None, 2.0, higher_is_better=False)])
    res = results.get("mirrors")
    if res:
        json_line = contender(res, "JSON line alone", "results")
        for c in res["results"][1:]:
            rows.append([f"`log()` with the {c['name'][2:]} mirror, per call", cell(c), f"JSON line alone {cell(json_line)}",
                         rtext(ratio(c, json_line)), "reported", "—"])
    return rows


def coke_rows(results: Results) -> list[list[str]]:
    """bench_coke_pipeline.py: CoKe's multi-crop pipeline (2 x 224 + 6 x 96 px from 256 px JPEGs); a quick run's
    figures stand in (and say so) until a full run exists."""
    res, mode = results.get("coke_pipeline"), ""
    quick = RESULTS_DIR / "coke_pipeline_quick.json"
    if res is None and quick.exists():
        res, mode = json.loads(quick.read_text()), " (quick run)"
    if not res:
        return []
    ours, upstream, pil = (contender(res, n) for n in ("torchstrap seeded", "upstream FFCV", "PIL DataLoader"))
    label = f"CoKe multi-crop loader, 256 px JPEG → 2 × 224 + 6 × 96 px, batch {res['batch_size']}, {res['workers']} workers{mode}"
    return [[f"{label}: seeded pipeline (the authors' ops) vs upstream FFCV (the ops it has: crop, brightness, "
             f"contrast, saturation, flip; no hue, grayscale, blur or solarization)", cell(ours), cell(upstream), rtext(ratio(ours, upstream)), "reported", "—"],
            [f"{label}: vs PIL DataLoader (the authors' torchvision transforms)", cell(ours), cell(pil),
             rtext(ratio(ours, pil)), "reported", "—"]]


def color_jitter_rows(results: Results) -> list[list[str]]:
    """bench_color_jitter.py: RandomColorJitter's kernel per 224 px image, one thread, against the per-pixel
    HSV kernel whose formulas are torchvision's."""
    res = results.get("color_jitter")
    if not res:
        return [["`RandomColorJitter`, 224 px image, 1 thread", "not measured (bench_color_jitter.py has not run)",
                 "—", "—", "< 300 µs", "—"]]
    rows = []
    for order, part in res["results"].items():
        old, new = part["contenders"]
        same = ("the same bytes" if part["max_abs_difference"] == 0 else
                f"at most {part['max_abs_difference']} level apart on {part['share_differing']:.1e} of the values")
        rows.append([f"`RandomColorJitter` (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), {order}, "
                     f"{res['size']} px image, 1 thread: output {same} as the per-pixel HSV kernel",
                     cell(new), f"per-pixel HSV kernel {cell(old)}", rtext(ratio(new, old)), "< 300 µs",
                     verdict(new["median"], 300.0, higher_is_better=False)])
    return rows


def ssl_pipeline_rows(results: Results) -> list[list[str]]:
    """bench_ssl_pipelines.py: DINO's multi-crop and BYOL's two views, img/s and ms per image."""
    res = results.get("ssl_pipelines")
    if not res:
        return [["SSL view pipelines (DINO multi-crop, BYOL two views)", "not measured (bench_ssl_pipelines.py has "
                 "not run)", "—", "—", "reported", "—"]]
    rows = []
    for part in res["results"].values():
        ours, upstream, pil = (contender(part, n) for n in ("torchstrap seeded", "upstream FFCV", "PIL DataLoader"))
        loads = part["load_average_1min"]
        label = (f"{part['label']} from 256 px JPEG, batch {res['batch_size']}, {res['workers']} workers "
                 f"(load average {min(loads):.1f}–{max(loads):.1f})")

        def with_ms(c: dict | None) -> str:
            return f"{cell(c)}, {1000 / c['median']:.1f} ms/img" if c else cell(c)

        rows.append([f"{label}: seeded pipeline vs upstream FFCV (the ops it has: crop, brightness, contrast, "
                     f"saturation, flip; no {part['upstream_missing_ops']})", with_ms(ours), with_ms(upstream),
                     rtext(ratio(ours, upstream)), "reported", "—"])
        rows.append([f"{label}: vs PIL DataLoader (the authors' torchvision transforms, in PIL; "
                     f"{part['pil_resample'].lower()} crops)", with_ms(ours), with_ms(pil), rtext(ratio(ours, pil)),
                     "reported", "—"])
    return rows


def ssl_margin_rows(results: Results) -> list[list[str]]:
    """ssl_margins.py: per SSL recipe on digits, the online probe's and the kNN's top-1, trained vs untrained."""
    res = results.get("ssl_margins")
    if not res or "untrained" not in next(iter(res["recipes"].values()), {}).get("summary", {}).get("val_knn_top1", {}):
        return []

    def span(s: dict, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(s['mean'])} [{f.format(s['min'])}–{f.format(s['max'])}]"

    rows = []
    for recipe, part in res["recipes"].items():
        probe, knn = part["summary"]["val_probe_top1"], part["summary"]["val_knn_top1"]
        seconds = statistics.mean(r["seconds"]["trained"] for r in part["runs"])
        rows.append([f"SSL `{recipe}` on digits (resnet-small, {res['epochs']} epochs, {len(part['runs'])} seed{'s' * (len(part['runs']) > 1)}, "
                     f"{seconds:.0f} s a run): val top-1 of the online linear probe / kNN, trained vs the same run "
                     "at lr ≈ 0",
                     f"probe {span(probe['trained'])}, kNN {span(knn['trained'])}",
                     f"untrained: probe {span(probe['untrained'])}, kNN {span(knn['untrained'])}",
                     f"margin: probe {span(probe['margin'], True)}, kNN {span(knn['margin'], True)}",
                     "margins > 0", verdict(min(probe["margin"]["mean"], knn["margin"]["mean"]), 1e-9)])
    return rows


GPU_ROWS = ("ResNet-50, 176 px", "ResNet-18, 160 px")   # bench_gpu.py's models, each plain and compiled


def gpu_rows(results: Results) -> list[list[str]]:
    """bench_gpu.py: Trainer vs raw loop on a GPU, bf16 + channels_last (+ compile); 'not measured' without one."""
    res = results.get("gpu") or {}
    if not res.get("rows"):
        why = res.get("not_measured", "bench_gpu.py has not run on a machine with a CUDA GPU")
        return [[f"GPU: {label}, batch 256, bf16 + channels_last{extra}: Trainer vs raw loop, images/s",
                 f"not measured ({why})", "—", "—", "≥ 0.97×", "—"]
                for label in GPU_ROWS for extra in ("", " + compile")]
    rows = []
    for row in res["rows"]:
        raw, ours = (contender(row, name) for name in ("raw loop", "Trainer"))
        share = row.get("share_of_peak")
        details = (f"data wait {100 * row['data_wait_share']:.1f}%, peak memory {fmt(row['peak_memory_mb'])} MiB, "
                   + (f"{100 * share:.1f}% of the {row['device']}'s bf16 peak ({row['peak_bf16_tflops']:g} TFLOP/s)"
                      if share is not None else f"{row['device']}: peak bf16 throughput unknown"))
        rows.append([f"GPU ({row['device']}): {row['label']}, batch {row['batch']}: Trainer vs raw loop; {details}",
                     cell(ours), f"raw loop {cell(raw)}", rtext(row["ratio"], 3), "≥ 0.97×", verdict(row["ratio"], 0.97)])
    return rows


def describe_machine(results: Results) -> str:
    for name in ("loader_256px", "trainer", "startup", "logging"):
        res = results.get(name)
        if res:
            m = res["machine"]
            return (f"{m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB, CPU only; Python {m['python']}, "
                    f"torch {m.get('torch', '?')}, FFCV {m.get('ffcv', '?')}, numba {m.get('numba', '?')}; "
                    f"measured {res['date_utc']}")
    return "no results yet"


def table(results: Results) -> str:
    """The markdown performance table, with a link to docs/performance.md (how the figures are taken)."""
    rows = (loader_rows(results) + startup_rows(results) + trainer_rows(results) + logging_rows(results)
            + generator_rows(results) + demo_rows(results) + runs_rows(results) + coke_rows(results)
            + color_jitter_rows(results) + ssl_pipeline_rows(results) + ssl_margin_rows(results)
            + gpu_rows(results))
    head = ["what", "torchstrap", "compared with", "ratio", "target", "met"]
    lines = [
        "### Performance (CPU figures)",
        "",
        f"Machine: {describe_machine(results)}.",
        "The machine is shared with other work while these run (2 cores, several processes), so absolute figures "
        "move from run to run: every benchmark interleaves its contenders (A B A B …) over several rounds; cells show "
        "the median [min–max], and the ratios of medians are the figures to compare. `make bench` measures again "
        "and rewrites this table; `bench/run_all.py --table-only` rebuilds it from the stored results "
        "(scripts and raw JSON in `bench/`). How each figure is taken, and what makes the code fast: "
        "[docs/performance.md](docs/performance.md).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(text: str, out: Path, readme: Path | None) -> bool:
    """Write the table to `out` and, when `readme` is given, between its markers; True if README was updated."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    if readme is None:
        return False
    content = readme.read_text()
    if START not in content or END not in content or content.index(START) > content.index(END):
        print(f"{readme} has no {START} … {END} block: the table is only in {out}")
        return False
    before, rest = content.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{text}{END}{after}")
    print(f"regenerated the performance table in {readme}")
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs; table to bench/results/README_table_quick.md")
    p.add_argument("--table-only", action="store_true", help="do not run anything, rebuild the table from JSON")
    p.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = p.parse_args()
    if not args.table_only:
        status = run_benchmarks(args.only, args.quick)
        failed = {k: v for k, v in status.items() if v != "ok" and "does not exist" not in v}
    else:
        failed = {}
    results = load_results(RESULTS_DIR, args.quick)
    out = RESULTS_DIR / f"README_table{'_quick' if args.quick else ''}.md"
    write_table(table(results), out, None if args.quick else REPO_DIR / "README.md")
    if failed:
        sys.exit(f"benchmarks that failed: {failed}")


if __name__ == "__main__":
    main()
