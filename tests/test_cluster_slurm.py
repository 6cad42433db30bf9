"""The launcher on a real single-node SLURM cluster (slurmctld + slurmd + munge on localhost).

The session fixture starts the cluster with scripts/local_slurm/start.sh (root on Debian only; elsewhere
every test here skips, saying why) and stops it afterwards if it started it. Jobs that can run together
are submitted at once (module fixture) and signalled from background threads; each test then checks one.
Every resumed run is compared with an uninterrupted run of the same config: bitwise weights, same logs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from torchstrap_runtime import launcher

import test_cluster_toy as toy
from test_resume import EPOCHS, ROOT, STEPS_PER_EPOCH, toy_config

pytestmark = pytest.mark.slurm
SCRIPTS = ROOT / "scripts" / "local_slurm"
CPUS = 12   # advertised (oversubscribed: the toy jobs mostly sleep)


def skip_reason() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Debian to start a local SLURM cluster (scripts/local_slurm/start.sh)"
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        return "needs Debian's slurmctld/slurmd/munge packages (apt-get) for the local SLURM cluster"
    if os.environ.get("TORCHSTRAP_SKIP_SLURM"):
        return "TORCHSTRAP_SKIP_SLURM is set"
    return None


def cluster_is_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(state in out.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    was_up = cluster_is_up()
    if not was_up:
        start = subprocess.run(["bash", str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, LOCAL_SLURM_CPUS=str(CPUS)))
        assert start.returncode == 0, f"local SLURM did not start:\n{start.stdout}\n{start.stderr}"
    yield
    if not was_up:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, text=True, timeout=120)


def slurm_config(base: Path, run_id: str, partition: str = "high", **overrides: dict) -> dict:
    config = toy_config(base / "runs", run_id, **overrides)
    config["slurm"].update(partition=partition, cpus_per_task=1, timeout_min=60, signal_delay_s=30,
                           folder=str(base / "submitit" / run_id / "%j"))
    config["slurm"].update(overrides.get("slurm", {}))
    return config


def rows(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def signal_when(run_dir: Path, min_rows: int, command: list[str], done: dict, key: str, timeout: float = 240) -> None:
    """Background: once the run has logged `min_rows` rows, run `command` (e.g. scancel --signal=USR2)."""
    def worker() -> None:
        end = time.time() + timeout
        while time.time() < end:
            if rows(run_dir) >= min_rows:
                done[key] = subprocess.run(command, capture_output=True, text=True).returncode == 0
                return
            time.sleep(0.2)
        done[key] = False
    threading.Thread(target=worker, daemon=True).start()


def job_log(job) -> str:
    return (job.stdout() or "") + (job.stderr() or "")


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted in-process runs to compare the cluster runs with."""
    folder = tmp_path_factory.mktemp("slurm_ref")
    launcher.run_training(toy_config(folder, "full"), toy.TRAINER)
    launcher.run_training(toy_config(folder, "one_epoch", training={"epochs": 1}), toy.TRAINER)
    return {"full": folder / "full", "one_epoch": folder / "one_epoch"}


@pytest.fixture(scope="module")
def jobs(slurm_cluster, references, tmp_path_factory) -> dict:
    """Submit every job that can run together, arrange their signals, return them by name."""
    base = tmp_path_factory.mktemp("slurm")
    signals: dict[str, bool] = {}
    out: dict = {"base": base, "signals": signals}
    [out["basic"]] = launcher.submit(slurm_config(base, "basic"), toy.TRAINER)

    config = slurm_config(base, "usr2", toy={"step_sleep": 0.15})
    [out["usr2"]] = launcher.submit(config, toy.TRAINER)
    signal_when(out["usr2"][1], 8, ["scancel", "--signal=USR2", str(out["usr2"][0].job_id)], signals, "usr2")

    config = slurm_config(base, "ddp", training={"epochs": 2}, optimizer={"lr": 0.05},
                          toy={"dropout": 0.0, "step_sleep": 0.15}, slurm={"tasks_per_node": 2})
    [out["ddp"]] = launcher.submit(config, toy.TRAINER)
    signal_when(out["ddp"][1], 12, ["scancel", "--signal=USR2", str(out["ddp"][0].job_id)], signals, "ddp")

    config = slurm_config(base, "sweep", training={"epochs": 1})
    out["sweep"] = launcher.submit(config, toy.TRAINER,
                                   sweeps=["optimizer.lr=0.1,0.02", "training.seed=0,1"])
    out["sbatch"] = submit_sbatch_script(base, signals)
    return out


def test_submit_and_collect_a_result(jobs, references):
    job, run_dir = jobs["basic"]
    result = job.result()
    assert result["finished"] and result["step"] == EPOCHS * STEPS_PER_EPOCH
    toy.assert_same_run(references["full"], run_dir)    # a SLURM run is the same run as in-process


def test_scancel_usr2_requeues_and_resumes_exactly(jobs, references):
    job, run_dir = jobs["usr2"]
    result = job.result()
    assert jobs["signals"]["usr2"], "scancel --signal=USR2 failed"
    assert result["finished"]
    log = job_log(job)
    assert "this job is preempted" in log
    assert (job.stderr() or "").count("resumed from") == 1
    toy.assert_same_run(references["full"], run_dir)


@pytest.mark.slow
def test_time_limit_requeues_and_resumes_exactly(slurm_cluster, references, tmp_path):
    """A 1-epoch job longer than its 2-minute limit: USR2 before the limit, save, requeue, resume.

    Slow (about 2.5 min): the limit's USR2 comes from slurmctld's periodic check, up to ~60 s early, so the
    limit must be 2 min (a signal before the job's Python starts would kill it) and the run longer than 90 s.
    """
    config = slurm_config(tmp_path, "timelimit", training={"epochs": 1}, toy={"step_sleep": 4.6},
                          slurm={"timeout_min": 2, "signal_delay_s": 30})
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER)
    result = job.result()
    assert result["finished"] and result["step"] == STEPS_PER_EPOCH
    assert "this job is timed-out" in job_log(job)
    assert (job.stderr() or "").count("resumed from") >= 1     # never assert how many (signal timing varies)
    toy.assert_same_run(references["one_epoch"], run_dir)


def test_two_task_ddp_job_with_usr2_matches_one_process(jobs, tmp_path):
    job, run_dir = jobs["ddp"]
    results = job.results()
    assert jobs["signals"]["ddp"]
    assert [r["rank"] for r in results] == [0, 1] and all(r["finished"] for r in results)
    assert (job.stderr() or "").count("resumed from") == 1
    over = dict(training={"epochs": 2}, optimizer={"lr": 0.05}, toy={"dropout": 0.0})
    launcher.run_training(toy_config(tmp_path, "one", **over), toy.TRAINER)
    s1, s2 = toy.final_state(tmp_path / "one"), toy.final_state(run_dir)
    for key in s1:
        assert torch.allclose(s1[key].double(), s2[key].double(), rtol=1e-4, atol=1e-5), key
    r1, r2 = toy.log_rows(tmp_path / "one"), toy.log_rows(run_dir)
    assert [(r["epoch"], r["step"], r["kind"]) for r in r1] == [(r["epoch"], r["step"], r["kind"]) for r in r2]
    assert max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(r1, r2)) < 1e-4


def test_sweep_is_one_job_array_with_a_run_folder_per_point(jobs):
    pairs = jobs["sweep"]
    assert len(pairs) == 4
    array_ids = {str(job.job_id).split("_")[0] for job, _ in pairs}
    assert len(array_ids) == 1 and sorted(str(job.job_id).split("_")[1] for job, _ in pairs) == ["0", "1", "2", "3"]
    points = set()
    for job, run_dir in pairs:
        assert job.result()["finished"]
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        points.add((saved["optimizer"]["lr"], saved["training"]["seed"]))
    assert points == {(0.1, 0), (0.1, 1), (0.02, 0), (0.02, 1)}


# ---------------------------------------------------------------------- plain sbatch script (no submitit)

def submit_sbatch_script(base: Path, signals: dict) -> tuple[str, Path]:
    """Render the template's train.sbatch, submit it with the toy trainer, signal it mid-run."""
    import jinja2

    source = (ROOT / "template" / "scripts" / "{% if use_slurm %}train.sbatch{% endif %}.jinja").read_text()
    script = base / "train.sbatch"
    script.write_text(jinja2.Template(source, keep_trailing_newline=True).render(
        package_name="toyexp", project_name="toy experiment"))
    workdir = base / "sbatch"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(json.dumps({
        "training": {"epochs": EPOCHS, "seed": 3, "device": "cpu"}, "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
        "logging": {"folder": str(workdir / "runs"), "progress": False, "log_every": 1},
        "toy": {"step_sleep": 0.15}}))
    env = dict(os.environ, TRAINER=toy.TRAINER, IMPORT="test_cluster_toy", CONFIG=str(workdir / "config.yaml"),
               PYTHON=sys.executable, PYTHONPATH=str(ROOT / "tests"))
    out = subprocess.run(["sbatch", "--parsable", "--partition=high", f"--chdir={workdir}", str(script)],
                         capture_output=True, text=True, env=env, cwd=workdir, check=True)
    job_id = out.stdout.strip().split(";")[0]
    run_dir = workdir / "runs" / job_id
    signal_when(run_dir, 10, ["scancel", "--signal=USR2", job_id], signals, "sbatch")
    return job_id, run_dir


def wait_job_gone(job_id: str, timeout: float = 300) -> str:
    """Wait until the job has left the queue for good; returns its last state."""
    end, state = time.time() + timeout, ""
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
        state = out.stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {state!r} after {timeout} s")


@pytest.mark.slow  # the submitit jobs above show the same requeue; this one checks the plain sbatch script
def test_plain_sbatch_script_requeues_on_usr2_and_resumes_exactly(jobs, references):
    job_id, run_dir = jobs["sbatch"]
    assert wait_job_gone(job_id) == "COMPLETED"
    assert jobs["signals"]["sbatch"]
    output = (run_dir.parent.parent / f"toyexp-{job_id}.out").read_text()
    assert "requeueing SLURM job" in output and "restart 1" in output and "resumed from" in output
    toy.assert_same_run(references["full"], run_dir)


# ---------------------------------------------------------------------- preemption (runs alone, last)

@pytest.mark.slow  # minutes: a job waits to be preempted by another partition's
def test_preemption_by_a_higher_priority_partition_resumes_exactly(jobs, references, tmp_path):
    """A `debug` job is preempted by an exclusive `high` job: USR2 at once, save, requeue, resume."""
    for name in ("basic", "usr2", "ddp"):   # the node must be free of other `high` jobs
        jobs[name][0].wait()
    for job, _ in jobs["sweep"]:
        job.wait()
    wait_job_gone(jobs["sbatch"][0])
    config = slurm_config(tmp_path, "victim", partition="debug", toy={"step_sleep": 0.15})
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER)
    end = time.time() + 240
    while rows(run_dir) < 8 and time.time() < end:
        time.sleep(0.2)
    preemptor = subprocess.run(["sbatch", "--parsable", "--partition=high", "--exclusive", "--output=/dev/null",
                                "--wrap", "sleep 2"], capture_output=True, text=True, check=True).stdout.strip()
    assert job.result()["finished"]
    assert wait_job_gone(preemptor) == "COMPLETED"
    log = job_log(job)
    assert "this job is preempted" in log
    assert (job.stderr() or "").count("resumed from") == 1
    toy.assert_same_run(references["full"], run_dir)


def test_unknown_partition_is_rejected_before_submission(slurm_cluster, tmp_path, capsys):
    argv = ["--slurm.partition", "nosuch", "--logging.folder", str(tmp_path / "runs"),
            "--slurm.folder", str(tmp_path / "submitit" / "%j")]
    with pytest.raises(SystemExit):
        launcher.main(toy.TRAINER, argv)
    err = capsys.readouterr().err
    assert "slurm.partition 'nosuch' does not exist on this cluster (known: debug, high)" in err


def test_start_and_stop_remove_what_they_add(slurm_cluster):
    """Last in the file (it restarts the cluster): stop.sh removes the sacct stand-in and the /etc/hosts line
    start.sh added; start.sh adds at most one such line however often it runs, and never overwrites a sacct
    that is not its own. /etc/hosts is restored exactly afterwards."""
    shim, hosts = Path("/usr/local/bin/sacct"), Path("/etc/hosts")
    mark = "added by torchstrap scripts/local_slurm/start.sh"
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, LOCAL_SLURM_CPUS=str(CPUS), LOCAL_SLURM_RESTART="1")

    def run(script: str) -> None:
        out = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"

    original = hosts.read_text()
    try:
        # without a line for this node, start.sh must add one (marked) so that the node name resolves
        hosts.write_text("".join(line + "\n" for line in original.splitlines()
                                 if not (line.split()[1:2] == [node] and mark not in line)))
        unresolved = hosts.read_text()
        run("stop.sh")
        run("start.sh")
        run("start.sh")
        assert hosts.read_text().count(mark) == 1, "one /etc/hosts line however often start.sh runs"
        assert mark in shim.read_text(), "the sacct stand-in is installed while the cluster runs"
        run("stop.sh")
        assert hosts.read_text() == unresolved and not shim.exists(), "stop.sh removes what start.sh added"
        foreign = "#!/bin/sh\necho a sacct that is not torchstrap's\n"
        shim.write_text(foreign)
        try:
            run("start.sh")
            assert shim.read_text() == foreign, "start.sh must not overwrite a sacct it did not write"
            run("stop.sh")
            assert shim.read_text() == foreign, "stop.sh must not remove a sacct it did not write"
        finally:
            shim.unlink()
    finally:
        hosts.write_text(original)
    run("start.sh")  # up again for the session fixture, which stops it
