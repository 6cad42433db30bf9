"""Faults of the machine, in a generated experiment run as a user runs it: SIGTERM and Ctrl-C (real signals to a
real training process), a kill -9 before the first checkpoint, a disk that fills (a real small tmpfs), memory that
runs out (the allocator refusing under a real address-space limit) and a read-only run folder (a read-only bind
mount). Each ends in one line and its exit code, keeps the last checkpoint and logs, leaves no temporary or lock
file, and the rerun ends where an uninterrupted run ends, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_faults import assert_one_sentence, experiment  # noqa: F401  (the generated experiment, shared)
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.runs import load_run

BATCHES = 8
RUN = ("--training.epochs", "1", "--training.limit_train_batches", str(BATCHES), "--training.limit_val_batches", "1",
       "--logging.log_every", "1")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def start(experiment, run_id: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"{run_id}.err"
    return experiment.start_train(*RUN, "--logging.run_id", run_id, *args, stderr=err), err


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "log.jsonl"
    return [r["step"] for r in read_log(path) if r["kind"] == "train_step"] if path.exists() else []


def losses(run_dir: Path) -> dict[int, float]:
    rows = [r for r in read_log(run_dir) if r["kind"] == "train_step"]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: r["train_loss"] for r in rows}


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The run ended where the uninterrupted run ended: the same losses at each step (each once), bitwise equal
    weights."""
    assert losses(run_dir) == losses(reference)
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def assert_nothing_left(run_dir: Path) -> None:
    """No lock and no temporary file; last.pt (when there is one) loads."""
    assert not (run_dir / "run.lock").exists()
    assert [p.name for folder in (run_dir, run_dir / "checkpoints") for p in folder.glob(".*.tmp")] == []
    if (run_dir / "checkpoints" / "last.pt").exists():
        weights(run_dir)


def lines(err: Path) -> list[str]:
    text = err.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text.strip().splitlines()


@pytest.fixture(scope="module")
def reference(experiment) -> Path:  # noqa: F811
    """An uninterrupted run of RUN."""
    done = experiment.run_train(*RUN, "--logging.run_id", "reference")
    assert done.returncode == 0, done.stderr[-3000:]
    return experiment.root / "runs" / "reference"


# ---------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum, code, status", [
    pytest.param(signal.SIGTERM, 143, "preempted", marks=pytest.mark.slow),  # the same path as SIGINT's
    (signal.SIGINT, 130, "interrupted")])
def test_a_signal_checkpoints_at_the_next_step_and_the_rerun_resumes_exactly(experiment, reference, tmp_path, signum,
                                                                               code, status):
    run_id = f"signal-{signum}"
    run_dir = experiment.root / "runs" / run_id
    process, err = start(experiment, run_id, tmp_path)
    wait_for(lambda: len(logged_steps(run_dir)) >= 3, process, "three logged steps")
    process.send_signal(signum)
    assert process.wait(timeout=300) == code, err.read_text()[-3000:]
    name = signal.Signals(signum).name
    notice, last = lines(err)
    assert notice == f"{name}: stopping after this step with a checkpoint ({name} again stops at once)"
    assert last.startswith(f"interrupted: {name}: stopped at epoch 0, step ")
    assert last.endswith(f"after saving a checkpoint; {run_dir / 'checkpoints' / 'last.pt'} is kept, rerun the same "
                         f"command to resume from it")
    assert_nothing_left(run_dir)
    stopped_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 3 <= stopped_at < BATCHES and logged_steps(run_dir) == list(range(stopped_at))
    assert load_run(run_dir).status == status

    rerun = experiment.run_train(*RUN, "--logging.run_id", run_id)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at epoch 0, batch {stopped_at}" in rerun.stderr
    assert_same_run(run_dir, reference)
    assert load_run(run_dir).status == "finished"


def test_a_second_ctrl_c_stops_at_once(experiment, tmp_path):  # noqa: F811
    run_dir = experiment.root / "runs" / "twice"
    # ResNet-18 steps take seconds on a CPU: the second Ctrl-C comes while the first waits for the step's end
    process, err = start(experiment, "twice", tmp_path, "--model.name", "resnet18")
    wait_for(lambda: len(logged_steps(run_dir)) >= 1, process, "a logged step")
    process.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping" in err.read_text(), process, "the notice of the first Ctrl-C")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, err.read_text()[-3000:]
    assert lines(err)[1:] == ["interrupted: SIGINT again: stopped at once, without a checkpoint of this step; no "
                              "checkpoint was written yet, a rerun starts over"]
    assert_nothing_left(run_dir)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert read_log(run_dir)[-1]["status"] == "interrupted"


# ---------------------------------------------------------------------- a kill before the first checkpoint
def test_a_kill_before_the_first_checkpoint_starts_the_logs_over(experiment, reference, tmp_path):  # noqa: F811
    run_dir = experiment.root / "runs" / "killed"
    process, err = start(experiment, "killed", tmp_path)
    wait_for(lambda: len(logged_steps(run_dir)) >= 3, process, "three logged steps")
    process.kill()
    process.wait(timeout=60)
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run_dir / "checkpoints" / f".last.pt.{dead.pid}.x1y2z3.tmp"  # what a kill during a checkpoint leaves
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"\0" * 4096)

    rerun = experiment.run_train(*RUN, "--logging.run_id", "killed")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (f"no checkpoint in {run_dir}: starting over, the logs of the earlier attempt are emptied (log.jsonl, "
            f"arrays.h5)") in rerun.stderr.splitlines()
    assert not stale.exists()
    assert_nothing_left(run_dir)
    assert_same_run(run_dir, reference)


# ---------------------------------------------------------------------- a full disk
@contextlib.contextmanager
def mounted(*mount: str, target: Path):
    """`mount *mount target`, unmounted after; the test is skipped when this process may not mount."""
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs or a read-only bind mount needs root")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *mount, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(mount)} failed here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_full_disk_keeps_the_last_checkpoint_and_resumes_once_there_is_space(experiment, reference, tmp_path):
    # the digits MLP's checkpoint is 13.7 MB: 24 MB hold last.pt of step 4, not a second one written beside it
    with mounted("-t", "tmpfs", "-o", "size=24m", "tmpfs", target=tmp_path / "small") as disk:
        run_dir = disk / "full"
        full = experiment.run_train(*RUN, "--logging.run_id", "full", "--logging.folder", str(disk),
                                    "--logging.checkpoint_every", "4")
        sentence = assert_one_sentence(full, f"error: the disk holding run folder {run_dir} is full (",
                                       f"the next checkpoint needs 13.7 MB: {run_dir / 'checkpoints' / 'last.pt'} and "
                                       f"the logs up to it are kept; free space there and rerun the same command to "
                                       f"resume")
        assert_nothing_left(run_dir)
        assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
        assert logged_steps(run_dir) == list(range(BATCHES))  # the rows up to the failed write: whole
        assert read_log(run_dir)[-1] == {**read_log(run_dir)[-1], "kind": "end", "status": "failed"}
        assert load_run(run_dir).status == "failed", sentence

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = experiment.run_train(*RUN, "--logging.run_id", "full", "--logging.folder", str(disk),
                                     "--logging.checkpoint_every", "4")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert_nothing_left(run_dir)
        assert_same_run(run_dir, reference)
        assert load_run(run_dir).status == "finished"


# ---------------------------------------------------------------------- memory that runs out
def virtual_size_after_imports(experiment) -> int:  # noqa: F811
    """Bytes of address space a python process has mapped once it imported what training imports."""
    done = experiment.run("-c", "import torch, numba, ffcv, h5py, torchstrap_runtime.trainer; "
                          "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])")
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip()) * 1024


@pytest.mark.slow  # allocates up to ~3 GiB before the allocator refuses
def test_out_of_memory_in_the_first_step_names_the_batch_size(experiment):  # noqa: F811
    # a real allocator refusal that uses little memory: the process may map 3 GiB more than python needs for its
    # imports, and ResNet-18's first step on 1024 images of 32 px needs about 6 GB more
    limit = virtual_size_after_imports(experiment) + (3 << 30)
    done = subprocess.run([sys.executable, *experiment.train_argv(*RUN, "--logging.run_id", "oom", "--model.name",
                                                                  "resnet18", "--data.batch_size", "1024")],
                          cwd=experiment.path, env=experiment.env, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert_one_sentence(done, "error: out of memory in the first training step (epoch 0) on cpu with batches of 1024 "
                              "samples (data.batch_size 1024) (the allocator refused ",
                        "lower data.batch_size (training.accumulate keeps the batch each optimizer step sees)")
    run_dir = experiment.root / "runs" / "oom"
    assert_nothing_left(run_dir)
    assert load_run(run_dir).status == "failed"


# ---------------------------------------------------------------------- a read-only run folder
def test_a_read_only_run_folder_on_resume(experiment, tmp_path):  # noqa: F811
    copy = tmp_path / "runs" / "earlier"   # a run folder of an earlier run (its files do not matter: the lock fails)
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    with mounted("--bind", str(copy), target=copy):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(copy)], capture_output=True, text=True)
        if remount.returncode != 0 or not _read_only(copy):
            pytest.skip(f"a read-only bind mount is refused here: {remount.stderr.strip()}")
        done = experiment.run_train(*RUN, "--logging.run_id", "earlier",
                                    "--logging.folder", str(tmp_path / "runs"))
        assert_one_sentence(done, f"error: run folder {copy} cannot be written (Read-only file system): a run writes "
                                  f"its lock, logs and checkpoints there; make it writable, or copy the run into "
                                  f"another logging.folder and resume it there")


def _read_only(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_a_rerun_on_a_disk_still_full_stops_at_the_lock(experiment, tmp_path):  # noqa: F811
    with mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=tmp_path / "tiny") as disk:
        (disk / "full").mkdir()
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
        done = experiment.run_train(*RUN, "--logging.run_id", "full", "--logging.folder", str(disk))
        assert_one_sentence(done, f"error: the disk holding run folder {disk / 'full'} is full (0.0 MB free) and the "
                                  f"run needs more space: no checkpoint was written yet; free space there and rerun")
        assert [p.name for p in (disk / "full").iterdir()] == []


def test_a_log_line_that_does_not_fit_is_cut_off_whole(tmp_path):
    from torchstrap_runtime.loggers import JSONLogger

    with mounted("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=tmp_path / "tiny") as disk:
        logger = JSONLogger(disk / "log.jsonl")
        logger.log({"kind": "train_step", "loss": 1.0}, step=0)
        with pytest.raises(OSError, match="No space left on device"):
            logger.log({"kind": "train_step", "text": "x" * (1 << 20)}, step=1)
        logger.log({"kind": "end", "status": "failed"}, step=1)
        logger.close()
        assert [(r["step"], r["kind"]) for r in read_log(disk / "log.jsonl")] == [(0, "train_step"), (1, "end")]


def test_temporary_files_of_dead_processes_are_removed_when_a_run_takes_its_folder(tmp_path):
    from torchstrap_runtime.run_folder import create_run_folder

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".log.jsonl.{dead.pid}.abc.tmp", tmp_path / "checkpoints" / f".last.pt.{dead.pid}.def.tmp"]
    live = tmp_path / "checkpoints" / f".best.pt.{os.getppid()}.ghi.tmp"  # a process that lives
    live.parent.mkdir()
    for path in (*stale, live):
        path.write_bytes(b"partial")
    create_run_folder(tmp_path).release()
    assert [path.exists() for path in stale] == [False, False] and live.exists()


def test_ctrl_c_outside_training_is_one_line(capsys):
    from torchstrap_runtime.errors import exit_on_user_error

    def interrupted(argv: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(interrupted, [])
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted: Ctrl-C\n"
