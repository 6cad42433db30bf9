"""An audit of exact resume: a CPU bfloat16 (autocast) run resumes bitwise after USR2, and the generated
experiment with its loader and augmentation seeds left null resumes bitwise in a new process, the seeds drawn
in the first process travelling in the checkpoint and recorded in config.json."""

from __future__ import annotations

import json

import pytest

import test_cluster_toy as toy
from experiments import Experiment
from test_resume import launcher, run_until_finished, toy_config
from test_resume_ffcv import experiment, run_segment  # noqa: F401  (the module-scoped generated experiment)
from torchstrap_runtime.checkpoint import load_torch

NULL_SEEDS = ["--data.loader_seed", "null", "--augmentation.crop_seed", "null", "--augmentation.translate_seed",
              "null", "--augmentation.flip_seed", "null"]
SEED_KEYS = {"RandomResizedCrop": "crop_seed", "RandomTranslation": "translate_seed", "RandomHorizontalFlip": "flip_seed"}


def test_cpu_bfloat16_usr2_resume_is_bitwise(tmp_path):
    over = dict(training={"dtype": "bfloat16"})
    assert launcher.run_training(toy_config(tmp_path, "ref", **over), toy.TRAINER)["finished"]
    run_until_finished(toy_config(tmp_path, "cut", **over, toy={"signal_at_steps": [9, 30]}))
    toy.assert_same_run(tmp_path / "ref", tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["config"]["training"]["dtype"] == "bfloat16"


def segment(experiment: Experiment, run_id: str, stops: list[int], args: list[str]) -> list[dict]:
    """One process training (or resuming) `run_id`, stopping on USR2 after a step in `stops`."""
    return run_segment(experiment, run_id, stops, tuple(args), timeout=600)


@pytest.mark.slow  # three training processes of the generated experiment (about 3 min on 2 idle cores)
def test_generated_experiment_with_null_seeds_resumes_bitwise(experiment):  # noqa: F811
    runs = experiment.path / "runs"
    cut = segment(experiment, "cut", [7], NULL_SEEDS)
    assert not cut[-1]["finished"]
    first = json.loads((runs / "cut" / "config.json").read_text())["seeds"]["train_loader_resolved"]
    while not cut[-1]["finished"] and len(cut) < 4:  # a requeued job: a new process draws other seeds, then resumes
        cut += segment(experiment, "cut", [7], NULL_SEEDS)
    assert cut[-1]["finished"]

    drawn = json.loads((runs / "cut" / "config.json").read_text())["seeds"]["train_loader_resolved"]
    saved = load_torch(runs / "cut" / "checkpoints" / "last.pt")["loader_seeds"]
    assert drawn == first, "config.json keeps the seeds of the first process"
    assert saved["order"] == drawn["order"] is not None
    assert saved["ops"] == [list(op) for op in drawn["augmentations"]["image"]], "checkpoint seeds == config.json"

    replay = ["--data.loader_seed", str(drawn["order"])]
    for op, seed in drawn["augmentations"]["image"]:
        replay += [f"--augmentation.{SEED_KEYS[op]}", str(seed)]
    assert segment(experiment, "replay", [], replay)[-1]["finished"]
    toy.assert_same_run(runs / "replay", runs / "cut")
