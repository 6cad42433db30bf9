"""Exact resume of a generated experiment on real FFCV .beton files (seeded order and augmentations).

An experiment is generated from this checkout's template (use_slurm on), its digits .beton files written,
and it is trained once uninterrupted, and once with real USR2s at chosen steps, each followed by a fresh
process resuming from last.pt, as a requeued job would. The generated
scripts/submit.py also runs a job through submitit's LocalExecutor and scripts/train.sbatch passes bash -n.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import test_cluster_toy as toy
from experiments import Experiment, make_experiment

SCRIPT = r"""
import json, os, signal, sys
exp, run_ids, stops, extra = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3]), json.loads(sys.argv[4])
sys.path.insert(0, os.path.join(exp, "src"))
os.chdir(exp)
import toyexp.config  # noqa: F401  (the experiment's sections)
from toyexp.trainer import Trainer
from torchstrap_runtime import config as cfg, launcher


class Cut(Trainer):
    def after_train_step(self):
        super().after_train_step()
        if self.step in stops:
            os.kill(os.getpid(), signal.SIGUSR2)   # as SLURM would: the launcher's handler asks for a stop


sys.modules["__main__"].Cut = Cut
results = []
for run_id in run_ids:   # runs in order; after a stopped run the process ends (its FFCV iterator is left)
    cfg.load_config(["-C", "configs/default.yaml", "--training.epochs", "2", "--logging.log_every", "1",
                     "--logging.progress", "false", "--logging.run_id", run_id, *extra])
    trainer = "__main__:Cut" if run_id.endswith("cut") else "toyexp.trainer:Trainer"
    results.append(launcher.run_training(cfg.config_as_dict(), trainer))
    if not results[-1]["finished"]:
        break
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    return make_experiment(tmp_path_factory.mktemp("ffcv"), {"project_name": "toyexp", "use_slurm": True})


def run_segment(experiment: Experiment, run_ids: str, stops: list[int], extra: tuple = (),
                timeout: int = 300) -> list[dict]:
    """One process: train (or resume) the runs `run_ids` in order until done, or a USR2 at one of `stops`
    (`extra`: more command-line config values)."""
    done = experiment.run("-c", SCRIPT, str(experiment.path), run_ids, json.dumps(stops), json.dumps(list(extra)),
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


@pytest.mark.parametrize("os_cache", ["true", pytest.param("false", marks=pytest.mark.slow)])  # false: quasi-random order
def test_generated_experiment_resumes_exactly_on_ffcv(experiment, os_cache):
    """USR2 mid-epoch 0, resume in a new process through epoch 1: bitwise weights, identical logs."""
    stops, extra, prefix = [7], ("--data.os_cache", os_cache), "" if os_cache == "true" else "quasi-"
    ref, *cut = run_segment(experiment, f"{prefix}ref,{prefix}cut", stops, extra)  # one FFCV warm-up for both
    assert ref["finished"]
    while not cut[-1]["finished"] and len(cut) < 6:       # a requeued job: a fresh process each time
        cut += run_segment(experiment, f"{prefix}cut", stops, extra)
    assert [r["step"] for r in cut[:-1]] == [s + 1 for s in stops]
    assert cut[-1]["finished"] and cut[-1]["step"] == ref["step"]
    toy.assert_same_run(experiment.path / "runs" / f"{prefix}ref", experiment.path / "runs" / f"{prefix}cut")


def test_generated_scripts(experiment):
    """submit.py rejects a missing partition before submitting; train.sbatch is valid bash."""
    done = experiment.run("scripts/submit.py", "-C", "configs/default.yaml")
    assert done.returncode == 2 and "slurm.partition is missing" in done.stderr, done.stderr[-2000:]
    assert subprocess.run(["bash", "-n", "scripts/train.sbatch"], cwd=experiment.path).returncode == 0
    text = (experiment.path / "scripts" / "train.sbatch").read_text()
    assert "#SBATCH --signal=USR2@120" in text and "#SBATCH --requeue" in text and "srun" in text
    assert "toyexp.trainer:Trainer" in text


@pytest.mark.slow
def test_generated_submit_runs_through_the_local_executor(experiment):
    """`python scripts/submit.py --local --wait` trains the generated experiment through submitit."""
    done = experiment.run("scripts/submit.py", "-C", "configs/default.yaml", "--local", "--wait", "--training.epochs",
                          "1", "--logging.run_id", "local", "--logging.progress", "false", timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"finished": true' in done.stdout
    assert (experiment.path / "runs" / "local" / "checkpoints" / "last.pt").exists()
