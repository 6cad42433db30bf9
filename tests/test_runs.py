"""`torchstrap runs` / `plot` and `torchstrap_runtime.runs` on real run folders made by short real runs.

Two learning rates x two seeds (the toy digits trainer, 2 epochs each, in-process), one run killed with
SIGKILL (a subprocess) and one preempted by USR2 then resumed; the table and the groups are checked value by
value against the logs read back independently.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from torchstrap.generator.cli import main
from torchstrap_runtime import config as cfg
from torchstrap_runtime import launcher
from torchstrap_runtime import runs as R
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.run_folder import LOCK_FILE

import test_cluster_toy as toy
from experiments import subprocess_env
from test_resume import toy_config as resume_toy_config

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
GRID = [(lr, seed) for lr in (0.1, 0.02) for seed in (0, 1)]


def toy_config(folder: Path, run_id: str, lr: float = 0.1, seed: int = 0, **overrides: dict) -> dict:
    """test_resume's toy run, EPOCHS epochs at learning rate `lr` and `seed`, the default schedule."""
    config = resume_toy_config(folder, run_id, training={"epochs": EPOCHS, "seed": seed}, optimizer={"lr": lr},
                               scheduler={"warmup_epochs": 0.0}, logging={"log_every": 5})
    for section, values in overrides.items():
        config[section].update(values)
    return config


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    for lr, seed in GRID:
        assert launcher.run_training(toy_config(folder, f"lr{lr}-s{seed}", lr, seed), toy.TRAINER)["finished"]
    # preempted at step 30 (USR2: checkpoint, return), then resumed by the same call, as a requeue does
    resumed = toy_config(folder, "resumed", 0.1, 2, toy={"signal_at_steps": [30]})
    assert not launcher.run_training(resumed, toy.TRAINER)["finished"]
    assert R.load_run(folder / "resumed").status == "preempted"
    assert launcher.run_training(resumed, toy.TRAINER)["finished"]
    # killed with SIGKILL at step 30 of a fresh run (in epoch 1: epoch 0 is logged)
    command = [sys.executable, "-m", "torchstrap_runtime.launcher", "run", toy.TRAINER, "--training.device", "cpu",
               "--training.epochs", str(EPOCHS), "--logging.folder", str(folder), "--logging.run_id", "killed",
               "--logging.progress", "false", "--logging.log_every", "5", "--toy.kill_at_step", "30"]
    killed = subprocess.run(command, env=subprocess_env(ROOT / "tests", ROOT), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    os.utime(folder / "killed" / "log.jsonl", (1, 1))   # a log untouched for long: no process behind it
    return folder


def epoch_values(run_dir: Path, key: str = "val_top1") -> list[float]:
    return [r[key] for r in read_log(run_dir) if r.get("kind") == "epoch"]


def test_table_matches_the_logs_value_by_value(runs_folder):
    runs = R.load_runs([runs_folder])
    assert [r.run_id for r in runs] == ["killed", "lr0.02-s0", "lr0.02-s1", "lr0.1-s0", "lr0.1-s1", "resumed"]
    rows = {row["run"]: row for row in R.runs_table(runs)}
    for run_id in ("lr0.02-s0", "lr0.02-s1", "lr0.1-s0", "lr0.1-s1", "resumed"):
        values = epoch_values(runs_folder / run_id)
        assert len(values) == EPOCHS
        row = rows[run_id]
        assert (row["status"], row["epochs"]) == ("finished", f"{EPOCHS}/{EPOCHS}")
        assert row["best_val_top1"] == max(values) and row["final_val_top1"] == values[-1]
        assert row["best_epoch"] == values.index(max(values))   # numbered from 0, as log.jsonl's "epoch"
        assert row["wall_s"] > 0
    assert rows["lr0.1-s1"]["optimizer.lr"] == 0.1 and rows["lr0.1-s1"]["training.seed"] == 1
    assert rows["lr0.02-s0"]["optimizer.lr"] == 0.02 and rows["lr0.02-s0"]["training.seed"] == 0
    # the killed run: one epoch logged, no end line, no live process
    assert (rows["killed"]["status"], rows["killed"]["epochs"]) == ("failed", f"1/{EPOCHS}")
    assert rows["killed"]["final_val_top1"] == epoch_values(runs_folder / "killed")[-1]
    # differing keys only: lr, seed and the toy's kill/signal settings; nothing that all runs share
    assert {"optimizer.lr", "training.seed", "toy.kill_at_step", "toy.signal_at_steps"} <= rows["killed"].keys()
    assert "training.epochs" not in rows["killed"] and "logging.run_id" not in rows["killed"]


def test_resumed_run_continues_the_logged_wall_time(runs_folder):
    """A resumed process's log times continue from the last kept line: `time` is the run's wall time."""
    log = read_log(runs_folder / "resumed")
    times = [r["time"] for r in log]
    assert times == sorted(times) and times[-1] > 0
    assert R.load_run(runs_folder / "resumed").wall_time == times[-1]
    assert [r["status"] for r in log if r.get("kind") == "end"] == ["finished"]   # the stop line was cut
    straight = read_log(runs_folder / "lr0.1-s0")
    assert [(r["step"], r.get("kind")) for r in log] == [(r["step"], r.get("kind")) for r in straight]


def test_groups_fold_seeds_into_mean_std_and_count(runs_folder):
    runs = R.filter_runs(R.load_runs([runs_folder]), ["toy.kill_at_step=-1", "toy.signal_at_steps=[]"])
    assert len(runs) == 4
    groups = {g["optimizer.lr"]: g for g in R.group_rows(R.runs_table(runs), ["training.seed"])}
    assert set(groups) == {0.1, 0.02}
    for lr, group in groups.items():
        best = [max(epoch_values(runs_folder / f"lr{lr}-s{seed}")) for seed in (0, 1)]
        final = [epoch_values(runs_folder / f"lr{lr}-s{seed}")[-1] for seed in (0, 1)]
        assert group["count"] == 2 and group["status"] == "2 finished" and "training.seed" not in group
        assert group["best_val_top1_mean"] == pytest.approx(statistics.mean(best))
        assert group["best_val_top1_std"] == pytest.approx(statistics.stdev(best))
        assert group["final_val_top1_mean"] == pytest.approx(statistics.mean(final))
        assert group["final_val_top1_std"] == pytest.approx(statistics.stdev(final))


def test_lock_of_a_live_process_means_running(runs_folder, tmp_path):
    import shutil
    import socket

    run = tmp_path / "killed"
    shutil.copytree(runs_folder / "killed", run)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert R.load_run(run).status == "running"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    assert R.load_run(run).status == "failed"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_formats_filter_sort(runs_folder, capsys):
    code, out, _ = cli(capsys, "runs", str(runs_folder), "--format", "json", "--filter", "optimizer.lr=0.1",
                       "--sort=-best_val_top1")
    rows = json.loads(out)
    assert code == 0 and {r["run"] for r in rows} == {"lr0.1-s0", "lr0.1-s1", "resumed", "killed"}  # default lr: 0.1
    assert [r["best_val_top1"] for r in rows] == sorted((r["best_val_top1"] for r in rows), reverse=True)
    code, out, _ = cli(capsys, "runs", str(runs_folder), "--format", "csv", "--filter", "status=finished")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("run,status,epochs,wall_s,") and len(lines) == 6
    code, out, _ = cli(capsys, "runs", str(runs_folder / "lr0.1-s0"), str(runs_folder / "lr0.02-s0"),
                       "--format", "markdown")
    assert code == 0 and out.splitlines()[0] == ("| run | status | epochs | wall_s | optimizer.lr | best_val_top1 | "
                                                 "best_epoch | final_val_top1 |")
    code, out, _ = cli(capsys, "runs", str(runs_folder), "--group-by", "training.seed", "--filter", "toy.kill_at_step=-1",
                       "--filter", "toy.signal_at_steps=[]")
    assert code == 0 and len(out.splitlines()) == 3 and " ± " in out and "2 finished" in out


@pytest.mark.parametrize("argv, message", [
    (["runs", "{missing}"], "is not a folder"),
    (["runs", "{runs}", "--filter", "optimizer.lrr=0.1"], "unknown key 'optimizer.lrr'"),
    (["runs", "{runs}", "--sort", "nope"], "unknown column 'nope'"),
    (["runs", "{runs}", "--group-by", "optimizer.momentum"], "'optimizer.momentum' is not a column"),
    (["plot", "{runs}", "--metric", "val_top7"], "no run logs the metric 'val_top7'"),
])
def test_bad_input_is_one_sentence_and_exit_2(runs_folder, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "missing", runs=runs_folder) for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plot_writes_a_png_of_groups(runs_folder, tmp_path, capsys):
    out = tmp_path / "runs.png"
    code, printed, _ = cli(capsys, "plot", str(runs_folder), "--metric", "val_top1", "--out", str(out),
                           "--filter", "toy.kill_at_step=-1", "--filter", "toy.signal_at_steps=[]")
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    for x in ("step", "time"):
        code, _, _ = cli(capsys, "plot", str(runs_folder), "--metric", "train_loss", "--x", x, "--out",
                         str(tmp_path / f"{x}.png"))
        assert code == 0 and (tmp_path / f"{x}.png").stat().st_size > 10_000


def test_curves_use_one_kind_of_line(runs_folder):
    """train_loss is in step lines and epoch lines: a curve takes the step lines (the most), val_top1 the epochs."""
    steps = [r["step"] for r in read_log(runs_folder / "lr0.1-s0") if r.get("kind") == "train_step"]
    xs, ys = R.read_curve(runs_folder / "lr0.1-s0", "train_loss", "step")
    assert xs == steps and len(ys) == len(steps)
    xs, ys = R.read_curve(runs_folder / "lr0.1-s0", "val_top1", "epoch")
    assert xs == [0, 1] and ys == epoch_values(runs_folder / "lr0.1-s0")   # numbered from 0, as log.jsonl
    xs, _ = R.read_curve(runs_folder / "resumed", "val_top1", "time")
    assert xs == epoch_values(runs_folder / "resumed", "time")   # the logged wall time, continued on resume


def test_dataframe(runs_folder):
    pd = pytest.importorskip("pandas")
    df = R.to_dataframe(R.runs_table(R.load_runs([runs_folder])))
    assert isinstance(df, pd.DataFrame) and len(df) == 6 and "best_val_top1" in df.columns


def test_tags_are_recorded_and_shown(runs_folder, tmp_path, capsys):
    import shutil

    for run_id, tags in (("lr0.1-s0", ["baseline"]), ("lr0.1-s1", ["baseline", "seed"])):
        shutil.copytree(runs_folder / run_id, tmp_path / run_id)
        record = json.loads((tmp_path / run_id / "config.json").read_text())
        assert record["config"]["logging"]["tags"] == []   # the key is recorded with every run
        record["config"]["logging"]["tags"] = tags
        (tmp_path / run_id / "config.json").write_text(json.dumps(record))
    rows = R.runs_table(R.load_runs([tmp_path]))
    assert [r["tags"] for r in rows] == ["baseline", "baseline,seed"] and "logging.tags" not in rows[0]
    code, out, _ = cli(capsys, "runs", str(tmp_path), "--filter", "logging.tags=seed", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("lr0.1-s1,") and ',"baseline,seed",' in out


def test_template_experiment_configs_override_the_default(tmp_path):
    """configs/experiment/*.yaml hold only keys the runtime declares (the .yaml.jinja ones as rendered for the
    default recipe and an FFCV one); later -C files win."""
    import jinja2

    experiments = ROOT / "template" / "configs" / "experiment"
    files = sorted(experiments.glob("*.yaml"))
    assert len(files) >= 2
    for template in sorted(experiments.glob("*.yaml.jinja")):
        for recipe in ("default", "ffcv-rn50"):
            files.append(tmp_path / f"{recipe}-{template.stem}")
            files[-1].write_text(jinja2.Template(template.read_text(), keep_trailing_newline=True).render(recipe=recipe))
    for file in files:
        cfg.load_config(["-C", str(file)])
    cfg.load_config(["-C", str(experiments / "smoke.yaml"), "-C", str(experiments / "tracked.yaml")])
    logging = cfg.config_as_dict()["logging"]
    assert cfg.config_as_dict()["training"]["epochs"] == 2 and logging["tags"] == ["tracked"]
    assert logging["backends"] == ["tensorboard", "csv"] and logging["log_every"] == 1


@pytest.mark.slow   # two submitit jobs in new processes: about a minute on 2 busy cores
def test_submit_status_shows_each_job_next_to_its_run(tmp_path, capsys):
    """`scripts/submit.py --status SWEEP_DIR` after a 2-point local sweep (submitit LocalExecutor, real jobs)."""
    submitit_dir = tmp_path / "submitit"
    argv = ["--training.epochs", "1", "--logging.folder", str(tmp_path / "runs"), "--logging.run_id", "sw",
            "--logging.progress", "false", "--slurm.folder", str(submitit_dir / "%j"),
            "--sweep", "optimizer.lr=0.1,0.02", "--local"]
    pairs = launcher.main(toy.TRAINER, argv)
    assert all(job.result()["finished"] for job, _ in pairs)
    capsys.readouterr()
    rows = launcher.main(toy.TRAINER, ["--status", str(submitit_dir)])
    out = capsys.readouterr().out
    assert sorted(r["job"] for r in rows) == sorted(str(job.job_id) for job, _ in pairs)
    for row in rows:
        run_dir = tmp_path / "runs" / row["run"]
        values = epoch_values(run_dir)
        assert (row["job_state"], row["status"], row["epochs"]) == ("COMPLETED", "finished", "1/1")
        assert row["best_val_top1"] == max(values)
        assert row["optimizer.lr"] == json.loads((run_dir / "config.json").read_text())["config"]["optimizer"]["lr"]
    assert {r["optimizer.lr"] for r in rows} == {0.1, 0.02}
    assert out.splitlines()[0].split()[:4] == ["job", "job_state", "run", "status"]
    with pytest.raises(SystemExit):
        launcher.main(toy.TRAINER, ["--status", str(tmp_path / "nowhere")])
    assert "is not a folder" in capsys.readouterr().err


def test_slurm_states_refine_the_status(runs_folder):
    """What sacct says of a recorded job id (config.json `slurm_job_id`) against what the files say."""
    killed, finished = R.load_run(runs_folder / "killed"), R.load_run(runs_folder / "lr0.1-s0")
    assert json.loads((runs_folder / "killed" / "config.json").read_text())["slurm_job_id"] is None  # not on SLURM
    assert [R.run_status(killed, s) for s in ("RUNNING", "REQUEUED", "PENDING", "PREEMPTED", "TIMEOUT", "FAILED")] \
        == ["running", "requeued", "requeued", "preempted", "preempted", "failed"]
    assert R.run_status(finished, "COMPLETED") == "finished" and R.run_status(finished, "CANCELLED") == "finished"
