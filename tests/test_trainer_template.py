"""A freshly generated experiment trains from the bodies in its own trainer.py: editing the loss line of
`train_step` there is all it takes to change the loss the loop optimizes and logs (each task). And its
`make eval` evaluates the run's best.pt when there is one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from torchstrap.generator.cli import new_experiment
from torchstrap.generator.template_repo import build_template_repo, tag
from torchstrap.generator.template_source import CHECKOUT

TASKS = yaml.safe_load((CHECKOUT / "copier.yml").read_text())["task"]["choices"]

# trains 2 steps with the generated trainer.py, edits its loss line, reloads the module, trains 2 steps again
_SCRIPT = """
import importlib, json, re, sys
from pathlib import Path
sys.path.insert(0, "src")
from torchstrap_runtime.config import load_config, set_values
from torchstrap_runtime.loggers import read_log
import my_experiment.config
load_config(["-C", "configs/default.yaml", "--data.train_path", sys.argv[1], "--data.val_path", sys.argv[2],
             "--training.epochs", "1", "--training.limit_train_batches", "2", "--training.limit_val_batches", "1",
             "--logging.log_every", "1", "--logging.progress", "false", "--logging.run_id", "original"])
import my_experiment.trainer as module
first = {}
for run in ("original", "edited"):
    set_values({"logging.run_id": run})
    module.Trainer().run()
    first[run] = [r["train_loss"] for r in read_log(Path("runs") / run) if r.get("kind") == "train_step"]
    path = Path(module.__file__)
    text = path.read_text()
    body = text[text.index("    def train_step("):text.index("    # --- end of train_step ---")]
    edited = re.sub(r"loss = self\\.criterion\\(", "loss = 3.0 * self.criterion(", body, count=1)
    path.write_text(text.replace(body, edited))
    module = importlib.reload(module)
print(json.dumps(first))
"""


@pytest.fixture(scope="module")
def template_and_digits(tmp_path_factory):
    from torchstrap_runtime.data import write_digits

    root = tmp_path_factory.mktemp("template")
    tpl = build_template_repo(root / "tpl")
    tag(tpl, "v1.0.0")
    return tpl, write_digits(root / "digits")


@pytest.mark.parametrize("task", [pytest.param(t, marks=[] if t == "supervised" else pytest.mark.slow) for t in TASKS])
def test_editing_the_loss_in_train_step_changes_the_loss(template_and_digits, tmp_path, task):
    tpl, digits = template_and_digits
    exp = new_experiment(tmp_path / "exp", {"task": task}, template=str(tpl))
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "NUMBA_CACHE_DIR": str(CHECKOUT / ".numba_cache")}
    result = subprocess.run([sys.executable, "-c", _SCRIPT, str(digits["train"]), str(digits["val"])], cwd=exp,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses["original"]) == len(losses["edited"]) == 2
    assert losses["edited"][0] == pytest.approx(3.0 * losses["original"][0], rel=1e-5)  # same weights, same batch
    assert "loss = 3.0 * self.criterion(" in (exp / "src" / "my_experiment" / "trainer.py").read_text()


def test_make_eval_uses_best_pt_when_there_is_one(template_and_digits, tmp_path):
    tpl, _ = template_and_digits
    exp = new_experiment(tmp_path / "exp", {}, template=str(tpl))
    checkpoints = exp / "runs" / "one" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(b"")

    def eval_command(*args: str) -> str:
        out = subprocess.run(["make", "-n", "eval", *args], cwd=exp, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if "eval_only" in line][0]

    assert re.search(r"--model.load_from runs/one/checkpoints/last.pt\b", eval_command())
    (checkpoints / "best.pt").write_bytes(b"")
    assert re.search(r"--model.load_from runs/one/checkpoints/best.pt\b", eval_command())
    assert re.search(r"--model.load_from runs/one/checkpoints/best.pt\b", eval_command("RUN=runs/one/"))


@pytest.mark.slow  # 4 digits epochs in a generated experiment (the runtime's eval_step: test_criteria_registry.py)
def test_adaptive_log_softmax_is_scored_on_its_classes(template_and_digits, tmp_path):
    """With AdaptiveLogSoftmaxWithLoss the model outputs features: the generated eval_step scores the loss
    layer's log_prob, so val_top1 is the digits accuracy, not the argmax of 32 features."""
    tpl, digits = template_and_digits
    exp = new_experiment(tmp_path / "exp", {}, template=str(tpl))
    env = {**os.environ, "PYTHONPATH": f"{exp / 'src'}{os.pathsep}{CHECKOUT}",
           "NUMBA_CACHE_DIR": str(CHECKOUT / ".numba_cache")}
    result = subprocess.run(
        [sys.executable, "-m", "my_experiment.train", "-C", "configs/default.yaml", "--data.train_path",
         str(digits["train"]), "--data.val_path", str(digits["val"]), "--training.epochs", "4",
         "--scheduler.warmup_epochs", "0", "--model.num_classes", "32", "--criterion.name",
         "AdaptiveLogSoftmaxWithLoss", "--criterion.params", "{in_features: 32, n_classes: 10, cutoffs: [5]}",
         "--logging.progress", "false", "--logging.run_id", "adaptive"],
        cwd=exp, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (exp / "runs" / "adaptive" / "log.jsonl").read_text().splitlines()]
    last = [row for row in rows if row.get("kind") == "epoch"][-1]
    assert last["val_top1"] > 0.9, last
