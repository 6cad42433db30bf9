"""`torchstrap verify RUN_DIR`: a reproducibility certificate of a run.

Re-runs the first `--steps` steps of a recorded run from its config.json, each in a fresh process (folders
under `RUN_DIR/verify/`), and checks against the run's steps.jsonl (steps_record.py) and between the re-runs:

    same settings     the batches' hashes, the losses and the weights (after each epoch reached, and after the
                      last step between re-runs) are bitwise the run's
    workers W         with data.num_workers W: every sample's augmented pixels (one hash per sample) and the
                      order of the samples are the same-settings re-run's
    batch size B      with data.batch_size B (the same samples over more or fewer steps): the same
    killed and resumed   a re-run killed (SIGKILL) after a random step and resumed from its last checkpoint
                      (logging.checkpoint_every) is bitwise the uninterrupted re-run: batches, losses, weights
    N processes       torchrun with N processes (gloo on the CPU), data.batch_size / N each: the union of the
                      ranks' samples at each step is the single process's

Writes `RUN_DIR/verify.json`, prints one line per property and a summary; `main` returns 0 only if all hold.
The re-runs' own process: `python -m torchstrap_runtime.verify --replay SPEC.json` (`replay_main`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadFileError, MissingFileError, UserError
from .run_folder import CONFIG_FILE, VERIFY_DIR, VERIFY_FILE, last_checkpoint, steps_file, write_json_atomic


@dataclass
class Rerun:
    """One re-run: its name, the config values it changes, its processes, where it dies."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1
    kill_after: int | None = None
    folder: Path | None = None
    error: str | None = None   # the last lines of its stderr when a process failed
    seconds: float = 0.0


@dataclass
class Finding:
    """A property and whether it holds; where it first differs."""

    name: str
    holds: bool
    detail: str
    step: int | None = None
    sample: int | None = None

    def line(self, width: int = 0) -> str:
        return f"{self.name:<{width}s}  {'holds' if self.holds else 'DIFFERS'}: {self.detail}"


# ---------------------------------------------------------------------- the run's record
def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, checked to hold what a re-run needs."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{run_dir} has no {CONFIG_FILE}: give the folder of a run (logging.folder/run_id)")
    try:
        record = json.loads(path.read_text())
        record["config"]["data"], record["config"]["training"]
    except (ValueError, KeyError, TypeError):
        raise BadFileError(f"{path} is not a run's {CONFIG_FILE} (it needs its 'config' with the data and training "
                           f"sections)") from None
    if not (record.get("trainer") or {}).get("class"):
        raise BadFileError(f"{path} does not name the run's Trainer class ('trainer'): runs recorded before "
                           f"`torchstrap verify` existed cannot be re-run by it")
    if int(record.get("world_size") or 1) > 1:
        raise UserError(f"{run_dir} trained with {record['world_size']} processes: torchstrap verify re-runs "
                        f"single-process runs (verify a 1-process run of the same config; --nproc compares it "
                        f"with {record['world_size']} processes)")
    if not steps_file(run_dir).is_file():
        raise MissingFileError(f"{run_dir} has no {steps_file(run_dir).name}: the run recorded no steps (a "
                               f"training.fast_dev_run, or a run from before the steps record)")
    return record


def replay_config(record: dict[str, Any], rerun: Rerun, folder: Path) -> dict[str, Any]:
    """The run's config with the re-run's changes, its run folder `folder`, no progress bars or mirrors."""
    config = json.loads(json.dumps(record["config"]))
    changes = {"logging.folder": str(folder.parent), "logging.run_id": folder.name, "logging.progress": False,
               "logging.backends": [], **rerun.changes}
    for key, value in changes.items():
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = value
    return config


# ---------------------------------------------------------------------- running the re-runs
def run_rerun(record: dict[str, Any], rerun: Rerun, root: Path, steps: int, label: str) -> None:
    """Run `rerun` in fresh processes (a killed one is started again to resume), showing its progress."""
    rerun.folder = root / rerun.name.replace(" ", "_")
    shutil.rmtree(rerun.folder, ignore_errors=True)
    started = time.perf_counter()
    attempts = [rerun.kill_after, None] if rerun.kill_after else [None]
    for kill_after in attempts:
        spec = {"trainer": record["trainer"], "config": replay_config(record, rerun, rerun.folder),
                "steps": steps, "kill_after": kill_after}
        spec_path = root / f"{rerun.folder.name}.spec.json"
        write_json_atomic(spec_path, spec)
        command = [sys.executable, "-m", "torchstrap_runtime.verify", "--replay", str(spec_path)]
        env = dict(os.environ)
        if rerun.nproc > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={rerun.nproc}", "-m", "torchstrap_runtime.verify", "--replay",
                       str(spec_path)]
            env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU
        process = subprocess.Popen(command, cwd=record.get("cwd") or None, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        stderr = show_progress(process, steps_file(rerun.folder), steps, label)
        if kill_after is not None and process.returncode == -9:
            continue  # killed as planned: the next attempt resumes it
        if process.returncode != 0:
            tail = [line for line in stderr.strip().splitlines() if line.strip()][-3:]
            rerun.error = f"exit code {process.returncode}: " + " | ".join(tail)
            break
    rerun.seconds = time.perf_counter() - started


def show_progress(process: subprocess.Popen, record_path: Path, steps: int, label: str) -> str:
    """Wait for `process`, printing `label: step S/N` as its steps record grows; its stderr."""
    import threading

    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(process.stderr.read()), daemon=True)
    reader.start()
    shown, tty = -1, sys.stderr.isatty()
    while process.poll() is None:
        time.sleep(0.5)
        done = count_lines(record_path)
        if done != shown and tty:
            print(f"\r{label}: step {min(done, steps)}/{steps}", end="", file=sys.stderr, flush=True)
            shown = done
    reader.join()
    if tty:
        print("\r" + " " * (len(label) + 24) + "\r", end="", file=sys.stderr, flush=True)
    return "".join(chunks)


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.startswith(b'{"step"'))
    except OSError:
        return 0


# ---------------------------------------------------------------------- comparisons
def samples_of(folder: Path, nproc: int = 1) -> list[dict[int, dict]]:
    """The steps of each rank's record of a re-run."""
    from .steps_record import read_steps  # torch: imported when needed, not by the `torchstrap` command line

    return [read_steps(steps_file(folder, rank))[0] for rank in range(nproc)]


def flat_samples(steps: dict[int, dict], count: int) -> list[tuple[int, str, int]]:
    """(dataset index, sample hash, step) of the first `count` samples of a re-run, in order."""
    flat = []
    for step in sorted(steps):
        record = steps[step]
        flat += [(index, digest, step) for index, digest in zip(record["indices"], record["samples"])]
    return flat[:count]


def sample_difference(reference: list[tuple], other: list[tuple], what: str) -> Finding | None:
    """The first sample whose position (order) or pixels differ between two sample sequences."""
    hashes = {index: digest for index, digest, _ in reference}
    for (index, digest, step), (other_index, other_digest, _) in zip(reference, other):
        if index != other_index:
            return Finding(what, False, f"differs at step {step}: order, sample {other_index} where the same-settings "
                                        f"re-run has sample {index}", step, index)
        if digest != other_digest:
            return Finding(what, False, f"differs at step {step}: sample {index}'s augmented pixels", step, index)
    for index, digest, step in other:
        if index in hashes and hashes[index] != digest:
            return Finding(what, False, f"differs at step {step}: sample {index}'s augmented pixels", step, index)
    if len(other) < len(reference):
        return Finding(what, False, f"gave {len(other)} samples where the same-settings re-run gave {len(reference)}")
    return None


def bitwise_difference(reference: dict[int, dict], other: dict[int, dict], steps: int, what: str,
                       witness: dict[int, dict] | None = None) -> Finding | None:
    """The first step whose batch hash or loss differs (a batch names its first differing sample when both
    sides, or `witness`, a second re-run, have per-sample hashes)."""
    for step in range(steps):
        if step not in other or step not in reference:
            return Finding(what, False, f"differs at step {step}: the step is missing from "
                                        f"{'the re-run' if step not in other else 'the reference'}", step)
        mine, theirs = reference[step], other[step]
        if mine["data"] != theirs["data"]:
            named = first_sample_named(theirs, mine if "samples" in mine else (witness or {}).get(step))
            sample = f" ({named[1]})" if named else ""
            return Finding(what, False, f"differs at step {step}: batch data{sample}", step, named[0] if named else None)
        if mine["loss"] != theirs["loss"]:
            return Finding(what, False, f"differs at step {step}: loss {mine['loss']!r} vs {theirs['loss']!r} "
                                        f"(same batch)", step)
    return None


def first_sample_named(one: dict, other: dict | None) -> tuple[int, str] | None:
    """(index, sentence) of the first sample of a step whose index or hash differs between two re-runs."""
    if other is None or "samples" not in one or "samples" not in other:
        return None
    for position, (a, b, ha, hb) in enumerate(zip(one["indices"], other["indices"], one["samples"], other["samples"])):
        if a != b:
            return a, f"position {position} holds sample {a} here and sample {b} in another re-run"
        if ha != hb:
            return a, f"sample {a}'s augmented pixels differ between two re-runs"
    return None


def check_same(original: tuple[dict, dict], same: Rerun, steps: int, witness: Rerun | None) -> Finding:
    name = "same settings"
    if same.error:
        return Finding(name, False, f"the re-run failed ({same.error})")
    from .steps_record import read_steps

    rerun_steps, rerun_epochs = read_steps(steps_file(same.folder))
    witness_steps = read_steps(steps_file(witness.folder))[0] if witness and not witness.error else None
    found = bitwise_difference(original[0], rerun_steps, steps, name, witness_steps)
    if found:
        return found
    for epoch in sorted(set(original[1]) & set(rerun_epochs)):
        if original[1][epoch] != rerun_epochs[epoch]:
            return Finding(name, False, f"differs after epoch {epoch}: the weights", max(rerun_steps) if rerun_steps
                           else None)
    epochs = sorted(set(original[1]) & set(rerun_epochs))
    weights = f", weights after epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}" if epochs else ""
    return Finding(name, True, f"{steps} steps: batches, losses{weights} bitwise equal")


def check_samples(reference: Rerun, other: Rerun, count: int, name: str) -> Finding:
    if other.error:
        return Finding(name, False, f"the re-run failed ({other.error})")
    found = sample_difference(flat_samples(samples_of(reference.folder)[0], count),
                              flat_samples(samples_of(other.folder)[0], count), name)
    return found or Finding(name, True, f"{count} samples: pixels and order equal")


def check_killed(reference: Rerun, killed: Rerun, steps: int) -> Finding:
    name = f"killed after step {killed.kill_after} and resumed"
    if killed.error:
        return Finding(name, False, f"the re-run failed ({killed.error})")
    mine, theirs = samples_of(reference.folder)[0], samples_of(killed.folder)[0]
    found = bitwise_difference(mine, theirs, steps, name)
    if found:
        return found
    last = steps - 1
    if mine[last].get("weights") != theirs[last].get("weights"):
        return Finding(name, False, f"differs at step {last}: the weights after it", last)
    return Finding(name, True, f"{steps} steps: batches, losses and the final weights bitwise equal to the "
                               f"uninterrupted re-run")


def check_processes(reference: Rerun, multi: Rerun, steps: int) -> Finding:
    name = f"{multi.nproc} processes"
    if multi.error:
        return Finding(name, False, f"the re-run failed ({multi.error})")
    single, ranks = samples_of(reference.folder)[0], samples_of(multi.folder, multi.nproc)
    for step in range(steps):
        if any(step not in rank for rank in ranks):
            return Finding(name, False, f"differs at step {step}: a rank has no such step", step)
        wanted = set(zip(single[step]["indices"], single[step]["samples"]))
        union = {pair for rank in ranks for pair in zip(rank[step]["indices"], rank[step]["samples"])}
        if wanted != union:
            index = min(wanted ^ union)[0]
            where = "only in the single process" if index in dict(wanted) and index not in dict(union) else \
                "only in the ranks" if index not in dict(wanted) else "with other pixels in the ranks"
            return Finding(name, False, f"differs at step {step}: sample {index} {where}", step, index)
    return Finding(name, True, f"{steps} steps: the ranks' samples together are the single process's")


# ---------------------------------------------------------------------- the command
def plan(record: dict[str, Any], steps: int, workers: list[int], batch_sizes: list[int], kill: bool,
         nproc: int, rng: random.Random) -> list[Rerun]:
    """The re-runs the asked properties need; the same-settings re-run first (every other compares with it)."""
    batch = int(record["config"]["data"]["batch_size"])
    reruns = [Rerun("same settings")]
    reruns += [Rerun(f"workers {w}", {"data.num_workers": w}) for w in workers]
    for size in batch_sizes:
        if size != batch:
            reruns.append(Rerun(f"batch size {size}", {"data.batch_size": size}))
    if kill:
        kill_after = rng.randint(2, steps - 1) if steps >= 3 else 1
        reruns.append(Rerun("killed and resumed", {"logging.checkpoint_every": max(1, kill_after // 2)},
                            kill_after=kill_after))
    if nproc > 1:
        if batch % nproc:
            raise UserError(f"--nproc {nproc} needs data.batch_size ({batch}) divisible by it: each process takes "
                            f"data.batch_size / {nproc} samples per step")
        reruns.append(Rerun(f"{nproc} processes", {"data.batch_size": batch // nproc, "training.device": "cpu"},
                            nproc=nproc))
    return reruns


def verify(run_dir: Path, steps: int = 20, workers: list[int] | None = None, batch_sizes: list[int] | None = None,
           kill: bool = False, nproc: int = 1, seed: int | None = None) -> dict[str, Any]:
    """Re-run and compare (see the module docstring); writes and returns verify.json's content."""
    from .steps_record import read_steps

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    original = read_steps(steps_file(run_dir))
    recorded = len([s for s in range(steps) if s in original[0]])
    if recorded < steps:
        if recorded == 0:
            raise UserError(f"{steps_file(run_dir)} records no step: nothing to verify")
        print(f"verify: the run recorded {recorded} steps; verifying those (--steps {steps} asked)", file=sys.stderr)
        steps = recorded
    batch = int(record["config"]["data"]["batch_size"])
    if batch_sizes is None:
        batch_sizes = [batch // 2] if batch % 2 == 0 else []
    seed = random.randrange(2**31) if seed is None else seed
    reruns = plan(record, steps, workers or [], batch_sizes, kill, nproc, random.Random(seed))
    root = run_dir / VERIFY_DIR
    root.mkdir(exist_ok=True)
    for number, rerun in enumerate(reruns, 1):
        label = f"verify [{number}/{len(reruns)}] {rerun.name}"
        rerun_steps = steps if "data.batch_size" not in rerun.changes or rerun.nproc > 1 else \
            -(-steps * batch // rerun.changes["data.batch_size"])
        run_rerun(record, rerun, root, rerun_steps, label)
        print(f"{label}: {rerun.seconds:.1f} s" + (" (failed)" if rerun.error else ""), file=sys.stderr)
    findings = compare(original, reruns, steps, steps * batch)
    for rerun in reruns:  # their steps records stay, their checkpoints (the model's size each) go
        shutil.rmtree(last_checkpoint(rerun.folder).parent, ignore_errors=True)
    result = {"run": str(run_dir), "steps": steps, "seed": seed, "holds": all(f.holds for f in findings),
              "properties": [asdict(f) for f in findings],
              "reruns": [{"name": r.name, "changes": r.changes, "nproc": r.nproc, "kill_after": r.kill_after,
                          "seconds": round(r.seconds, 2), "error": r.error} for r in reruns]}
    write_json_atomic(run_dir / VERIFY_FILE, result)
    return result


def compare(original: tuple[dict, dict], reruns: list[Rerun], steps: int, samples: int) -> list[Finding]:
    same, others = reruns[0], reruns[1:]
    witness = next((r for r in others if r.kill_after), None) or next((r for r in others if r.nproc == 1), None)
    findings = [check_same(original, same, steps, witness)]
    for rerun in others:
        if same.error:
            findings.append(Finding(rerun.name, False, "not compared: the same-settings re-run failed"))
        elif rerun.kill_after:
            findings.append(check_killed(same, rerun, steps))
        elif rerun.nproc > 1:
            findings.append(check_processes(same, rerun, steps))
        else:
            findings.append(check_samples(same, rerun, samples, rerun.name))
    return findings


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 1,4") from None
    if any(v < 1 for v in values):
        raise UserError(f"{flag} {text!r}: every value must be at least 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder (logging.folder/run_id)")
    parser.add_argument("--steps", type=int, default=20, help="re-run and compare the first N steps (default 20)")
    parser.add_argument("--workers", default="1,4", help="data.num_workers values to compare (default 1,4; '' none)")
    parser.add_argument("--batch-sizes", default=None,
                        help="data.batch_size values to compare (default: half the run's when even; '' none)")
    parser.add_argument("--kill", action="store_true", help="also kill a re-run at a random step and resume it")
    parser.add_argument("--nproc", type=int, default=1, help="also compare with N processes (torchrun, gloo on CPU)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random kill step (default: fresh)")


def main(args: argparse.Namespace) -> int:
    """`torchstrap verify`: prints one line per property and a summary; 0 only if all hold."""
    if args.steps < 1:
        raise UserError(f"--steps {args.steps}: re-run at least 1 step")
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: at least 1 process")
    batch_sizes = None if args.batch_sizes is None else int_list(args.batch_sizes, "--batch-sizes")
    result = verify(args.run_dir, args.steps, int_list(args.workers, "--workers"), batch_sizes, args.kill,
                    args.nproc, args.seed)
    findings = [Finding(**f) for f in result["properties"]]
    width = max(len(f.name) for f in findings)
    for finding in findings:
        print(finding.line(width))
    held = sum(f.holds for f in findings)
    print(f"{held}/{len(findings)} properties hold over {result['steps']} steps"
          f"{'' if result['holds'] else ': NOT reproducible'} ({Path(args.run_dir) / VERIFY_FILE})")
    return 0 if result["holds"] else 1


# ---------------------------------------------------------------------- a re-run's process
def replay_main(spec_path: Path) -> None:
    """Run the recorded Trainer on the spec's config, recording every sample, until the spec's step."""
    import importlib

    from . import steps_record
    from .config import load_config

    spec = json.loads(Path(spec_path).read_text())
    trainer = spec["trainer"]
    if trainer.get("path") and trainer["path"] not in sys.path:
        sys.path.insert(0, trainer["path"])
    module_name, class_name = trainer["class"].rsplit(".", 1)
    trainer_class = getattr(importlib.import_module(module_name), class_name)
    steps_record.replay = steps_record.Replay(spec["steps"], spec.get("kill_after"))
    load_config([], config=spec["config"], package=module_name.split(".")[0])
    trainer_class().run()


if __name__ == "__main__":
    from .errors import exit_on_user_error

    parser = argparse.ArgumentParser(prog="python -m torchstrap_runtime.verify")
    parser.add_argument("--replay", type=Path, required=True, help="a re-run's spec (written by torchstrap verify)")
    exit_on_user_error(lambda argv: replay_main(parser.parse_args(argv).replay))
