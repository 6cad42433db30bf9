"""The launcher through submitit's LocalExecutor (no cluster needed): submit, USR2 requeue with exact resume,
sweeps, a 2-process DDP job vs 1 process, and bad input rejected before anything is submitted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from torchstrap_runtime import launcher

import test_cluster_toy as toy
from test_resume import EPOCHS, ROOT, STEPS_PER_EPOCH, declared_as_in_a_toy_job, toy_config


@pytest.fixture(autouse=True)
def job_env(monkeypatch):
    """tests/ off PYTHONPATH: job processes find test_cluster_toy.py through the job's recorded sys.path."""
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT / "tests"]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(kept))
    monkeypatch.setenv("NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")))


def local_config(tmp_path: Path, run_id: str, **overrides: dict) -> dict:
    config = toy_config(tmp_path / "runs", run_id, **overrides)
    config["slurm"].update(folder=str(tmp_path / "submitit" / "%j"), timeout_min=30, signal_delay_s=5,
                           **overrides.get("slurm", {}))
    return config


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ref")
    assert launcher.run_training(toy_config(folder, "ref"), toy.TRAINER)["finished"]
    return folder / "ref"


def test_local_usr2_requeues_and_resumes_exactly(tmp_path, reference):
    """A real USR2 through submitit's handler: step finishes, checkpoint, requeue (exit code 3), resume."""
    config = local_config(tmp_path, "run", toy={"signal_at_steps": [30]})
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER, local=True)
    result = job.result()
    assert result["finished"] and result["step"] == EPOCHS * STEPS_PER_EPOCH
    assert run_dir == tmp_path / "runs" / "run"
    toy.assert_same_run(reference, run_dir)
    logs = job.stderr() or ""
    assert logs.count("resumed from") == 1, logs[-3000:]
    assert "Requeued job" in (job.stdout() or "") + logs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_local_usr2_on_cuda_resumes_exactly(tmp_path):
    """The same requeue on a GPU job (gpus_per_node=1): CUDA RNG, weights and logs are restored exactly."""
    over = dict(training={"device": "cuda"})
    assert launcher.run_training(toy_config(tmp_path / "runs", "ref", **over), toy.TRAINER)["finished"]
    config = local_config(tmp_path, "run", slurm={"gpus_per_node": 1}, toy={"signal_at_steps": [30]}, **over)
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER, local=True)
    assert job.result()["finished"] and (job.stderr() or "").count("resumed from") == 1
    toy.assert_same_run(tmp_path / "runs" / "ref", run_dir)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    """The same run with 1 process (in this process) and with 2 DDP processes (LocalExecutor, 2 tasks)."""
    folder = tmp_path_factory.mktemp("ddp")
    over = dict(training={"epochs": 2}, toy={"dropout": 0.0}, optimizer={"lr": 0.05})
    assert launcher.run_training(toy_config(folder / "runs", "one", **over), toy.TRAINER)["finished"]
    config = local_config(folder, "two", slurm={"tasks_per_node": 2}, **over)
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER, local=True)
    results = job.results()
    assert [r["rank"] for r in results] == [0, 1] and all(r["finished"] for r in results)
    return folder / "runs" / "one", run_dir


def test_two_process_ddp_matches_one_process(ddp_run):
    """Global batch 64 = 2 x 32: weights (incl. SyncBN running stats) and logged losses match within float tolerance."""
    one, two = ddp_run
    s1, s2 = toy.final_state(one), toy.final_state(two)
    assert s1.keys() == s2.keys()
    for key in s1:
        assert torch.allclose(s1[key].double(), s2[key].double(), rtol=1e-4, atol=1e-5), key
    r1, r2 = toy.log_rows(one), toy.log_rows(two)
    assert len(r1) == len(r2) == 2 * (STEPS_PER_EPOCH + 1)    # rank 0 logs only: no duplicated rows
    for a, b in zip(r1, r2):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for key in ("train_loss", "val_loss", "val_top1"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    assert json.loads((two / "config.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_process_ddp_usr2_on_one_rank_resumes_exactly(tmp_path, ddp_run):
    """USR2 reaches only rank 0's process: both ranks stop after the same step, then the job resumes bitwise."""
    over = dict(training={"epochs": 2}, toy={"dropout": 0.0, "signal_at_steps": [15]}, optimizer={"lr": 0.05})
    config = local_config(tmp_path, "two", slurm={"tasks_per_node": 2}, **over)
    [(job, run_dir)] = launcher.submit(config, toy.TRAINER, local=True)
    assert all(r["finished"] for r in job.results())
    assert "resumed from" in (job.stderr() or "")
    toy.assert_same_run(ddp_run[1], run_dir)


def test_local_sweep_gives_one_run_folder_per_point(tmp_path, capsys):
    """`--sweep` over 2 x 1 values: 2 jobs, 2 run folders named after the values (2 x 2 runs on SLURM)."""
    folder = tmp_path / "runs"
    argv = ["--training.epochs", "1", "--logging.folder", str(folder), "--logging.run_id", "sw",
            "--logging.progress", "false", "--slurm.folder", str(tmp_path / "submitit" / "%j"),
            "--sweep", "optimizer.lr=0.1,0.02", "--sweep", "training.seed=5", "--local"]
    with declared_as_in_a_toy_job():   # keys other tests' imports declared here would be unknown to the jobs
        pairs = launcher.main(toy.TRAINER, argv)
    assert len(pairs) == 2
    assert "submitted 2 job(s) locally" in capsys.readouterr().out
    seen = set()
    for job, run_dir in pairs:
        assert job.result()["finished"]
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        seen.add((saved["optimizer"]["lr"], saved["training"]["seed"]))
        assert run_dir.name == f"sw__optimizer.lr={saved['optimizer']['lr']}__training.seed={saved['training']['seed']}"
    assert seen == {(0.1, 5), (0.02, 5)}


# ---------------------------------------------------------------------- bad input: nothing is submitted

def _main_error(tmp_path: Path, capsys, *args: str) -> str:
    argv = ["--logging.folder", str(tmp_path / "runs"), "--slurm.folder", str(tmp_path / "submitit" / "%j"), *args]
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(toy.TRAINER, argv)
    assert exit_info.value.code == 2
    assert not (tmp_path / "submitit").exists() or not any((tmp_path / "submitit").rglob("*.pkl"))
    return capsys.readouterr().err


def test_unknown_slurm_option_is_rejected_with_a_suggestion(tmp_path, capsys):
    err = _main_error(tmp_path, capsys, "--slurm.partition", "debug", "--slurm.extra", '{"acount": "abc"}')
    assert "unknown SLURM option 'acount'" in err and "account" in err


def test_launcher_managed_option_in_extra_is_rejected(tmp_path, capsys):
    err = _main_error(tmp_path, capsys, "--slurm.partition", "debug", "--slurm.extra", '{"time": 5}', "--local")
    assert "'time' is set by the launcher; use slurm.timeout_min" in err


def test_missing_partition_is_rejected(tmp_path, capsys):
    err = _main_error(tmp_path, capsys)
    assert "slurm.partition is missing" in err


def test_unwritable_log_folder_is_rejected(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = _main_error(tmp_path, capsys, "--local", "--logging.folder", str(blocker / "runs"))
    assert "logging.folder" in err and "not writable" in err


def test_unwritable_slurm_folder_is_rejected(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = _main_error(tmp_path, capsys, "--local", "--slurm.folder", str(blocker / "logs" / "%j"))
    assert "slurm.folder" in err and "not writable" in err


def test_bad_sweeps_are_rejected(tmp_path, capsys):
    assert "unknown config key 'optimizer.lrr'" in _main_error(tmp_path, capsys, "--local", "--sweep", "optimizer.lrr=1,2")
    assert "expected SECTION.KEY=V1,V2" in _main_error(tmp_path, capsys, "--local", "--sweep", "optimizer.lr")
    err = _main_error(tmp_path, capsys, "--local", "--sweep", "optimizer.lr=0.1,fast")
    assert "optimizer.lr: got 'fast', expected a float" in err


def test_extra_options_reach_sbatch(tmp_path):
    """Named submitit options and any other sbatch option end up in the generated sbatch script."""
    from submitit.slurm.slurm import _make_sbatch_string   # what SlurmExecutor writes (no srun needed here)

    config = local_config(tmp_path, "x")
    slurm = dict(config["slurm"], partition="gpu", gpus_per_node=2, tasks_per_node=2, mem_gb=32,
                 extra={"account": "abc", "qos": "high", "mail-type": "END", "reservation": "r1", "exclusive": True})
    params = launcher.slurm_executor_parameters(slurm)
    text = _make_sbatch_string(command="python -c pass", folder=tmp_path / "s", **params)
    for line in ("--account=abc", "--qos=high", "--mail-type=END", "--reservation=r1", "--exclusive", "--requeue",
                 "--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--mem=32G", "--time=30",
                 "--signal=USR2@5"):
        assert f"#SBATCH {line}\n" in text, line


# ---------------------------------------------------------------------- ranks from the environment

@pytest.mark.parametrize("with_scontrol", [True, False])
def test_ranks_from_an_srun_step(monkeypatch, with_scontrol):
    """Inside `srun`: rank/local rank/world size from SLURM_*, master = first node of the step, port from job id."""
    from torchstrap_runtime.distributed import distributed_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    if not with_scontrol:
        monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "41234")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[07-10],cpu1")
    if with_scontrol and shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed")
    assert distributed_env() == (5, 1, 8)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 41234 % 20000)


def test_batch_script_itself_is_one_process(monkeypatch):
    """The sbatch shell (no SLURM_STEP_ID) of a 4-task job is not a 4-process world: only srun tasks are."""
    from torchstrap_runtime.distributed import distributed_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed_env() == (0, 0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_env() == (1, 1, 2)   # torchrun / submitit variables win
