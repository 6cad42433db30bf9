"""Bad input a user can cause, tried as a user would: one sentence, exit code 2, no traceback (unless --debug).

A real experiment is generated from this checkout's template and run as a subprocess (`python -m
my_experiment.train`), on real digits .beton files; the run-folder lock is tried with real processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments import Experiment, make_experiment, subprocess_env
from torchstrap_runtime.run_folder import LOCK_FILE, RunFolderBusyError, RunLock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    return make_experiment(tmp_path_factory.mktemp("errors"), {"use_slurm": False})


def train(experiment: Experiment, *args: str, **run) -> subprocess.CompletedProcess:
    """`python -m my_experiment.train -C configs/default.yaml` on the digits, one epoch, with `args`."""
    return experiment.run_train("--training.epochs", "1", *args, **run)


def assert_one_sentence(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one sentence, nothing else
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, sentence", [
    (["--training.epochs", "-3"], "training.epochs: got '-3', expected an int >= 1 (on the command line)"),
    (["--data.batch_size", "0"], "data.batch_size: got '0', expected an int >= 1 (on the command line)"),
    (["--optimizer.lr", "-1"], "optimizer.lr: got '-1', expected a float > 0 (on the command line)"),
    (["--optimizer.momentum", "1"], "optimizer.momentum: got '1', expected a float in [0, 1)"),
    (["--scheduler.gamma", "0"], "scheduler.gamma: got '0', expected a float in (0, 1]"),
    (["--augmentation.flip_p", "1.5"], "augmentation.flip_p: got '1.5', expected a float in [0, 1]"),
    (["--data.loader_seed", "-1"], "data.loader_seed: got '-1', expected an int >= 0 or none"),
])
def test_value_out_of_range_stops_before_any_work(experiment, args, sentence):
    result = train(experiment, *args, "--logging.run_id", "never")
    assert_one_sentence(result, sentence)
    assert not (experiment.root / "runs" / "never").exists()


def test_debug_flag_and_env_show_the_traceback(experiment):
    for extra, env in [(["--debug"], None), ([], {"TORCHSTRAP_DEBUG": "1"})]:
        result = train(experiment, "--optimizer.lr", "-1", *extra, env=env)
        assert result.returncode != 0 and "Traceback" in result.stderr
        assert "ConfigError: optimizer.lr: got '-1', expected a float > 0" in result.stderr


def test_bad_yaml_and_unreadable_config_file(experiment, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  epochs: [1\n")
    assert_one_sentence(train(experiment, "-C", str(broken)), f"config file '{broken}' could not be parsed",
                        "line 3, column 1")
    assert_one_sentence(train(experiment, "-C", str(tmp_path)), f"config file '{tmp_path}' cannot be read")


def test_print_config_prints_the_resolved_config(experiment):
    import yaml

    result = train(experiment, "--optimizer.lr", "0.05", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["optimizer"]["lr"] == 0.05 and printed["training"]["epochs"] == 1
    assert printed["data"]["train_path"] == str(experiment.train) and "augmentation" in printed


def test_missing_beton_and_corrupt_last_checkpoint(experiment):
    missing = experiment.root / "missing.beton"
    assert_one_sentence(train(experiment, "--data.train_path", str(missing)), f"FFCV dataset {missing} does not exist")
    last = experiment.root / "runs" / "corrupt-last" / "checkpoints" / "last.pt"  # the run being resumed
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated zip")
    assert_one_sentence(train(experiment, "--logging.run_id", "corrupt-last", "--training.eval_only", "true"),
                        f"checkpoint {last} cannot be loaded: corrupt, truncated or not a torch checkpoint")


def test_corrupt_beton_and_missing_checkpoint_are_user_errors(experiment, tmp_path):
    """The same raise lines, in process (each subprocess costs an FFCV start)."""
    from torchstrap_runtime.data import check_beton
    from torchstrap_runtime.errors import UserError
    from torchstrap_runtime.checkpoint import load_torch

    corrupt = tmp_path / "corrupt.beton"
    corrupt.write_bytes(experiment.train.read_bytes()[:5000])  # a truncated real .beton
    with pytest.raises(UserError, match=f"{corrupt} is not a valid FFCV .beton file"):
        check_beton(corrupt)
    with pytest.raises(UserError, match="checkpoint .*missing.pt does not exist"):
        load_torch(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="checkpoint .*garbage.pt cannot be loaded"):
        load_torch(tmp_path / "garbage.pt")


def test_checkpoint_of_another_architecture_is_one_sentence(experiment, tmp_path):
    """model.load_from of another network: one sentence naming the file and the first keys that differ."""
    import torch

    other = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Sequential(torch.nn.Linear(7, 3)).state_dict()}, other)
    assert_one_sentence(train(experiment, "--model.load_from", str(other), "--training.eval_only", "true"),
                        f"checkpoint {other} does not fit the model", "not in the model: 0.weight, 0.bias")


def test_last_checkpoint_after_the_model_changed_is_a_user_error(tmp_path):
    """Resuming a run whose last.pt was written by a model the researcher has since changed."""
    import torch

    from torchstrap_runtime.config import load_config
    from torchstrap_runtime.errors import UserError
    from torchstrap_runtime.trainer import Trainer

    class Tiny(Trainer):
        width = 2

        def initialize_model(self):
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, self.width))

        def initialize_train_loader(self):
            self.train_loader = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]

        def initialize_val_loader(self):
            self.val_loader = self.train_loader

    load_config(["--training.epochs", "1", "--logging.progress", "false", "--logging.folder", str(tmp_path),
                 "--logging.run_id", "changed"])
    Tiny().run()
    Tiny.width = 3
    last = tmp_path / "changed" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match=rf"checkpoint {last} does not fit the model \(other shapes: 1.weight "
                                        r"\(2, 12\) in the file, \(3, 12\) in the model, 1.bias"):
        Tiny()


# ------------------------------------------------------------------------------------------- run-folder lock

TINY_RUN = textwrap.dedent("""
    import sys, time
    import torch
    from torchstrap_runtime.config import load_config
    from torchstrap_runtime.errors import exit_on_user_error
    from torchstrap_runtime.trainer import Trainer

    class Tiny(Trainer):
        def initialize_model(self):
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        def initialize_train_loader(self):
            self.train_loader = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
        def initialize_val_loader(self):
            self.val_loader = self.train_loader

    def main(argv):
        hold = argv.pop(0) == "hold"
        load_config(argv)
        trainer = Tiny()
        if hold:
            print("HOLDING", flush=True)
            time.sleep(600)
        trainer.run()
        print("TRAINED", flush=True)

    exit_on_user_error(main)
""")


def tiny(tmp_path: Path, mode: str, **popen) -> subprocess.Popen:
    script = tmp_path / "tiny_run.py"
    script.write_text(TINY_RUN)
    args = [sys.executable, str(script), mode, "--training.epochs", "1", "--logging.progress", "false",
            "--logging.folder", str(tmp_path / "runs"), "--logging.run_id", "shared"]
    return subprocess.Popen(args, cwd=tmp_path, env=subprocess_env(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_second_process_on_a_run_folder_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    holder = tiny(tmp_path, "hold")
    try:
        assert holder.stdout.readline().strip() == "HOLDING", holder.stderr.read()
        second = tiny(tmp_path, "run")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "Traceback" not in err, err
        run = tmp_path / "runs" / "shared"
        assert err.strip() == (f"error: run folder {run} is in use by process {holder.pid} on host "
                               f"{socket.gethostname()}; wait for it to finish or choose another logging.run_id "
                               f"(if that process is gone, delete {run / LOCK_FILE})")
        assert "TRAINED" not in out
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the lock file stays behind
        holder.wait()
    assert json.loads((tmp_path / "runs" / "shared" / LOCK_FILE).read_text())["pid"] == holder.pid
    third = tiny(tmp_path, "run")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0 and "TRAINED" in out, err
    assert not (tmp_path / "runs" / "shared" / LOCK_FILE).exists()  # released at exit


def write_lock(run: Path, **holder) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": 0, "slurm_job": "", **holder}))


def test_lock_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    try:
        run = tmp_path / "run"
        write_lock(run, pid=alive.pid)
        with pytest.raises(RunFolderBusyError, match=f"in use by process {alive.pid} on host"):
            RunLock(run).acquire()
        write_lock(run, pid=alive.pid, host="another-node")  # cannot tell whether it lives there: busy
        with pytest.raises(RunFolderBusyError, match="on host another-node"):
            RunLock(run).acquire()
        write_lock(run, pid=dead_pid.pid)  # dead on this host: taken over
        lock = RunLock(run).acquire()
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert RunLock(run).acquire().held  # this process may take its own lock again
        lock.release()
        write_lock(run, pid=alive.pid, host="another-node", slurm_job="77")  # requeued job 77, on another node
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        with RunLock(run) as lock:
            assert json.loads((run / LOCK_FILE).read_text())["slurm_job"] == "77"
        assert not (run / LOCK_FILE).exists()
        (run / LOCK_FILE).write_text("{half")
        with pytest.raises(RunFolderBusyError, match="unreadable"):
            RunLock(run).acquire()
    finally:
        alive.kill()
        alive.wait()


def test_torchstrap_cli_user_error_and_debug(tmp_path):
    nowhere = tmp_path / "nowhere"
    cli = [sys.executable, "-m", "torchstrap.generator.cli", "check", str(nowhere)]
    env = {k: v for k, v in os.environ.items() if k != "TORCHSTRAP_DEBUG"}
    result = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("torchstrap check: ") and str(nowhere) in result.stderr
    result = subprocess.run([*cli, "--debug"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr
