"""`scripts/submit.py --resume SWEEP_DIR`: resubmit only the runs of a sweep that need it, so they resume exactly.

On the local SLURM cluster (test_cluster_slurm's fixture), a generated experiment's sweep of three runs: one
finishes, one is killed mid-run (SIGKILL to its job step), one is cancelled before it starts. `--dry-run` lists
exactly the two to resubmit; `--resume` resubmits them and both end with the logs and weights of uninterrupted
runs. Without a cluster, the same through submitit's LocalExecutor with the toy trainer (a run that kills itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchstrap_runtime import launcher
from torchstrap_runtime.runs import load_run
from torchstrap_runtime.sweeps import sweep_plan

import test_cluster_toy as toy
from experiments import Experiment, make_experiment
from test_cluster_slurm import rows, slurm_cluster, wait_job_gone  # noqa: F401  (slurm_cluster: a fixture)
from test_cluster_local import job_env, local_config  # noqa: F401  (job_env: an autouse fixture)
from test_resume import toy_config

FAST = ("--training.epochs", "2", "--training.limit_train_batches", "30", "--training.limit_val_batches", "1",
        "--logging.log_every", "1", "--logging.checkpoint_every", "3", "--logging.progress", "false")

REFERENCES = r"""
import os, sys
exp, folder, seeds, fast = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
sys.path.insert(0, os.path.join(exp, "src"))
os.chdir(exp)
import sweepexp.config  # noqa: F401  (the experiment's sections)
from torchstrap_runtime import config as cfg, launcher
for seed in seeds:   # uninterrupted runs, one process
    cfg.load_config(["-C", "configs/default.yaml", *fast, "--logging.folder", folder, "--logging.run_id", "ref" + seed,
                     "--training.seed", seed])
    assert launcher.run_training(cfg.config_as_dict(), "sweepexp.trainer:Trainer")["finished"]
"""


def resume(experiment: Experiment, sweep_dir: Path, *flags: str) -> tuple[str, dict[str, dict[str, str]]]:
    """`scripts/submit.py --resume sweep_dir *flags`: its output and its table as {run: {column: cell}}."""
    done = experiment.run("scripts/submit.py", "--resume", str(sweep_dir), *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = lines[0].split()
    table = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == len(header):
            table[cells[0]] = dict(zip(header, cells))
    return done.stdout, table


@pytest.mark.slurm
@pytest.mark.slow
def test_resume_resubmits_the_killed_and_the_cancelled_run_of_a_sweep(slurm_cluster, tmp_path):  # noqa: F811
    experiment = make_experiment(tmp_path, {"project_name": "sweepexp", "use_slurm": True})
    data = ("--data.train_path", str(experiment.train), "--data.val_path", str(experiment.val))
    runs, sweep_dir = tmp_path / "runs", tmp_path / "submitit"
    references = subprocess.Popen([sys.executable, "-c", REFERENCES, str(experiment.path), str(tmp_path / "refs"),
                                   "1,2", *FAST, *data], cwd=experiment.path, env=experiment.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = experiment.run("scripts/submit.py", "-C", "configs/default.yaml", *FAST, *data,
                          "--logging.folder", str(runs), "--logging.run_id", "sweep", "--slurm.partition", "high",
                          "--slurm.cpus_per_task", "1", "--slurm.array_parallelism", "2",
                          "--slurm.folder", str(sweep_dir / "%j"), "--sweep", "training.seed=0,1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = dict(re.findall(r"job (\S+): run folder \S+__training\.seed=(\d)", done.stdout)[i][::-1] for i in range(3))
    assert sorted(jobs) == ["0", "1", "2"], done.stdout
    # at most 2 tasks run at once: task 2 is still pending, cancel it before it starts
    assert subprocess.run(["scancel", jobs["2"]]).returncode == 0
    killed = runs / "sweep__training.seed=1"
    end = time.time() + 300
    while rows(killed) < 8 and time.time() < end:   # past its checkpoint at step 6: kill the job step
        time.sleep(0.05)
    assert subprocess.run(["scancel", "--signal=KILL", jobs["1"]]).returncode == 0
    assert wait_job_gone(jobs["0"]) == "COMPLETED"
    assert wait_job_gone(jobs["1"]) != "COMPLETED"
    assert not (runs / "sweep__training.seed=2").exists()

    submitted = sorted(sweep_dir.rglob("*_submitted.pkl"))
    out, plan = resume(experiment, sweep_dir, "--dry-run")
    assert {run: row["action"] for run, row in plan.items()} == {
        "sweep__training.seed=0": "leave", "sweep__training.seed=1": "resubmit",
        "sweep__training.seed=2": "resubmit"}, out
    assert plan["sweep__training.seed=0"]["status"] == "finished"
    assert plan["sweep__training.seed=1"]["status"] == "failed"
    assert plan["sweep__training.seed=2"]["status"] == "never started"
    assert "would resubmit 2 of 3 run(s)" in out
    assert sorted(sweep_dir.rglob("*_submitted.pkl")) == submitted, "a dry run submits nothing"

    out, plan = resume(experiment, sweep_dir)
    new_jobs = {seed: plan[f"sweep__training.seed={seed}"]["action"].rsplit(" ", 1)[-1] for seed in "12"}
    assert plan["sweep__training.seed=0"]["action"] == "leave", out
    for job in new_jobs.values():
        assert wait_job_gone(job) == "COMPLETED", out
    assert references.wait(timeout=600) == 0, references.stdout.read()[-3000:]
    for seed in "12":   # logs (losses per step) and final weights equal to uninterrupted runs
        toy.assert_same_run(tmp_path / "refs" / f"ref{seed}", runs / f"sweep__training.seed={seed}")
    assert "resumed from" in "".join(p.read_text() for p in sweep_dir.glob(f"{new_jobs['1']}/*.err"))

    _, plan = resume(experiment, sweep_dir, "--dry-run")
    assert all(row["status"] == "finished" and row["action"] == "leave" for row in plan.values()), plan


@pytest.mark.slow
def test_local_sweep_resumes_only_the_run_that_was_killed(tmp_path):
    """submitit's LocalExecutor: a sweep over `toy.kill_at_step` (no effect on the numbers), one run SIGKILLs
    itself mid-run; `--resume --local` resubmits it alone and it ends as the uninterrupted run."""
    config = local_config(tmp_path, "local", logging={"checkpoint_every": 5})
    pairs = launcher.submit(config, toy.TRAINER, sweeps=["toy.kill_at_step=-1,33"], local=True)
    for job, _ in pairs:
        job.wait()
    launcher.run_training(toy_config(tmp_path / "refs", "ref", logging={"checkpoint_every": 5}), toy.TRAINER)
    sweep_dir = tmp_path / "submitit"
    plan = {run.run_dir.name: run for run in sweep_plan(sweep_dir, slurm=False)}
    assert {name: (run.status, run.resubmit) for name, run in plan.items()} == {
        "local__toy.kill_at_step=-1": ("finished", False), "local__toy.kill_at_step=33": ("failed", True)}
    resumed = launcher.main(toy.TRAINER, ["--resume", str(sweep_dir), "--local"])
    [again] = [run for run in resumed if run.new_job]
    assert again.run_dir.name == "local__toy.kill_at_step=33"
    deadline = time.time() + 300
    while load_run(again.run_dir).status != "finished" and time.time() < deadline:
        time.sleep(0.5)
    assert [run.status for run in sweep_plan(sweep_dir, slurm=False)] == ["finished", "finished"]
    toy.assert_same_run(tmp_path / "refs" / "ref", again.run_dir)


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "--resume needs the sweep's folder: --resume SWEEP_DIR"),
    (["--resume", "{tmp}/nosuch"], "is not a folder: give the sweep's submitit folder"),
    (["--resume", "{tmp}", "--slurm.partition", "gpu"], "--resume takes one SWEEP_DIR and only --dry-run and --local"),
])
def test_bad_resume_input_is_one_sentence_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        launcher.main(toy.TRAINER, [a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_folder_without_submissions_resubmits_nothing(tmp_path, capsys):
    assert launcher.main(toy.TRAINER, ["--resume", str(tmp_path)]) == []
    assert capsys.readouterr().out == f"no submitted runs under {tmp_path}\n"
