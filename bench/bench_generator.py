"""Wall time of `torchstrap new` and `torchstrap update` on the default experiment (targets: 2 s / 5 s).

A template repository is built from this checkout (copier.yml + template/), tagged v1.0.0, then changed
and tagged v1.0.1. Each round runs the real console script in a fresh process, as a researcher would:
  new:    torchstrap new EXP --template TPL --vcs-ref v1.0.0 --defaults
  update: (researcher edit committed) torchstrap update EXP  -> v1.0.1

    python bench/bench_generator.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torchstrap.generator.template_repo import build_template_repo, commit, tag  # noqa: E402

TORCHSTRAP = Path(sys.executable).with_name("torchstrap")
TARGETS = {"torchstrap new": 2.0, "torchstrap update": 5.0}


CPU: dict[str, list[float]] = {name: [] for name in TARGETS}  # CPU seconds (process + its git children)


def timed(*argv: str) -> float:
    """Wall seconds of one `torchstrap` command; its CPU seconds go to CPU (less sensitive to load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(TORCHSTRAP), *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    CPU[f"torchstrap {argv[0]}"].append(cpu)
    return seconds


def change_template(repo: Path) -> None:
    """A v1.0.1-like change: one line appended to the first rendered Markdown/Python file of the template."""
    files = sorted(p for p in (repo / "template").rglob("*") if p.is_file() and p.suffix in {".md", ".jinja", ".py"})
    target = next((p for p in files if "README" in p.name), files[0])
    target.write_text(target.read_text() + "\n<!-- template v1.0.1 -->\n" if "README" in target.name
                      else target.read_text() + "\n# template v1.0.1\n")


def researcher_edit(exp: Path) -> None:
    """Append a line to the largest Python file, as an edited hook would."""
    source = max((p for p in exp.rglob("*.py") if ".git" not in p.parts), key=lambda p: p.stat().st_size)
    source.write_text(source.read_text() + "\n# researcher's note\n")
    commit(exp, "researcher edit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    values: dict[str, list[float]] = {name: [] for name in TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench_generator_") as tmp:
        tpl = build_template_repo(Path(tmp) / "tpl")
        tag(tpl, "v1.0.0")
        change_template(tpl)
        tag(tpl, "v1.0.1", "v1.0.1: small template change")
        timed("new", str(Path(tmp) / "warmup"), "--template", str(tpl), "--defaults")  # warm file caches
        CPU["torchstrap new"].clear()
        for r in range(rounds):
            exp = Path(tmp) / f"exp{r}"
            values["torchstrap new"].append(
                timed("new", str(exp), "--template", str(tpl), "--vcs-ref", "v1.0.0", "--defaults"))
            researcher_edit(exp)
            values["torchstrap update"].append(timed("update", str(exp)))
            print(f"  round {r + 1}/{rounds}: new {values['torchstrap new'][-1]:.2f} s, "
                  f"update {values['torchstrap update'][-1]:.2f} s", flush=True)
    load = os.getloadavg()[0]
    print(f"\nwall time (load average {load:.1f} on {os.cpu_count()} cores), and CPU time of the command")
    print(f"{'command':<20s} {'median':>8s} {'min':>8s} {'max':>8s} {'target':>8s} {'CPU med':>8s}")
    results = {}
    for name, target in TARGETS.items():
        v, cpu = values[name], statistics.median(CPU[name])
        print(f"{name:<20s} {statistics.median(v):>7.2f}s {min(v):>7.2f}s {max(v):>7.2f}s {target:>7.1f}s {cpu:>7.2f}s")
        results[name] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                         "target_s": target, "values_s": v, "cpu_median_s": cpu}
    try:
        sys.path.insert(0, str(REPO / "bench"))
        from common import write_results  # shared bench helper (machine description, JSON)
    except ImportError:
        return
    write_results("generator_quick" if args.quick else "generator", {"rounds": rounds, "results": results})


if __name__ == "__main__":
    main()
