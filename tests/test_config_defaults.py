"""One source of defaults, Sections anywhere in the experiment, one command-line reader.

In process: `read_argv`/`split_options` (the config, `--debug` and the launcher read argv with them), the defaults
file layer of `load_config`, `import_package`, `--print-config`'s commented YAML. Then freshly generated
experiments, run as a user does: `--print-config` with and without `-C configs/default.yaml` is the same for every
task, and a `Section` appended to the experiment's trainer.py is set from the command line and a YAML file, shown
by `--help`/`--print-config` and recorded in config.json after one epoch on the digits.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from experiments import Experiment, make_experiment, template_repo
from torchstrap_runtime import config as cfg
from torchstrap_runtime.command_line import Option, read_argv, split_options
from torchstrap_runtime.config import (Int, Param, Section, config_as_dict, config_files, import_package,
                                       load_config, reset_config)
from torchstrap_runtime.errors import DEBUG_ENV, exit_on_user_error

TASKS = ["supervised", "ssl-multiview", "metric-learning"]


@pytest.fixture
def fresh_config():
    """A config with one section of our own; the previous sections come back afterwards."""
    saved = cfg.get_config()
    reset_config()
    Section("train", "loop").params(epochs=Param(Int(min=1), "number of epochs", default=10),
                                    warmup=Param(Int(min=0), "warm-up epochs", default=0))
    yield cfg.get_config()
    cfg.set_current_config(saved)
    reset_config(keep_sections=True)


# ------------------------------------------------------------------------------ one command-line reader

def test_read_argv_rules():
    assert read_argv(["-C", "a.yaml", "--a.b=1", "--lr", "-0.1", "--flag", "--x", "3", "stray", "--bare"]) == [
        Option("-C", "a.yaml", ("-C", "a.yaml")), Option("--a.b", "1", ("--a.b=1",)),
        Option("--lr", "-0.1", ("--lr", "-0.1")), Option("--flag", None, ("--flag",)),
        Option("--x", "3", ("--x", "3")), Option("", "stray", ("stray",)), Option("--bare", None, ("--bare",))]
    assert read_argv(["--print-config", "x"], flags=["--print-config"])[0] == Option("--print-config", None,
                                                                                     ("--print-config",))
    assert read_argv(["--a.b", "-C", "f"])[0].value is None  # -C is an option, never a value


def test_split_options_takes_flags_and_repeated_options_out_in_order():
    found, rest = split_options(["--sweep", "a=1,2", "--x.y", "3", "--local", "--sweep=b=0", "--local=1"],
                                flags=["--local", "--wait"], options=["--sweep"])
    assert found == {"--local": [True], "--wait": [], "--sweep": ["a=1,2", "b=0"]}
    assert rest == ["--x.y", "3", "--local=1"]  # a flag is taken only bare
    found, rest = split_options(["-C", "a", "--config-file=b", "-C", "c"], options=[("-C", "--config-file")])
    assert found == {"-C": ["a", "b", "c"]} and rest == []
    with pytest.raises(ValueError, match="--sweep needs a value"):
        split_options(["--sweep", "--local"], flags=["--local"], options=["--sweep"])


def test_launcher_and_debug_read_argv_with_the_same_reader(monkeypatch):
    from torchstrap_runtime.launcher import LaunchError, split_launcher_args

    assert split_launcher_args(["--sweep=optimizer.lr=0.1,0.2", "--wait", "--training.epochs", "2"]) == (
        ["--training.epochs", "2"], ["optimizer.lr=0.1,0.2"], False, True)
    with pytest.raises(LaunchError, match="--sweep needs a value"):
        split_launcher_args(["--local", "--sweep"])
    monkeypatch.setenv(DEBUG_ENV, "0")  # put back as it was after the test
    seen = []
    exit_on_user_error(seen.append, ["--optimizer.lr", "-1", "--debug"])
    assert seen == [["--optimizer.lr", "-1"]] and os.environ[DEBUG_ENV] == "1"


# ------------------------------------------------------------------------------ the defaults file layer

def test_defaults_file_is_the_base_layer(fresh_config, tmp_path):
    defaults = tmp_path / "default.yaml"
    defaults.write_text("train:\n  epochs: 20     # over the declared 10\n")
    other = tmp_path / "other.yaml"
    other.write_text("train: {warmup: 2}\n")
    load_config([], defaults_file=defaults)
    assert config_as_dict() == {"train": {"epochs": 20, "warmup": 0}} and config_files() == [str(defaults)]
    load_config(["-C", str(defaults)], defaults_file=defaults)  # naming it again changes nothing
    assert config_as_dict() == {"train": {"epochs": 20, "warmup": 0}}
    assert config_files() == [str(defaults)] * 2  # both reads are recorded
    load_config(["-C", str(other), "--train.epochs", "3"], defaults_file=defaults)  # files, then the command line
    assert config_as_dict() == {"train": {"epochs": 3, "warmup": 2}} and config_files() == [str(defaults), str(other)]
    load_config([])
    assert config_as_dict() == {"train": {"epochs": 10, "warmup": 0}} and config_files() == []


def test_missing_or_bad_defaults_file_is_one_sentence(fresh_config, tmp_path, capsys):
    missing = tmp_path / "default.yaml"
    with pytest.raises(SystemExit) as exit_info:
        load_config([], defaults_file=missing)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"config error: defaults file '{missing}' does not exist: it holds the experiment's values over the "
        "declared defaults and is read first; restore it (an empty file sets nothing)")
    missing.write_text("")
    load_config([], defaults_file=missing)  # an empty file sets nothing
    missing.write_text("train:\n  epoch: 20\n")
    with pytest.raises(SystemExit):
        load_config([], defaults_file=missing)
    assert f"unknown config key 'train.epoch' (in {missing}); did you mean 'train.epochs'?" in capsys.readouterr().err


def test_help_shows_the_defaults_file_values(fresh_config, tmp_path, capsys):
    defaults = tmp_path / "default.yaml"
    defaults.write_text("train: {epochs: 20}\n")
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--help"], description="my run", defaults_file=defaults)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "my run" in out
    assert f"number of epochs (an int >= 1; default 20 from {defaults}; declared 10)" in out
    assert "warm-up epochs (an int >= 0; default 0)" in out


def test_print_config_lists_every_key_with_its_help_and_loads_back(fresh_config, tmp_path, capsys):
    Section("extra", "odd values").params(text=Param(str, "a text", default="a: b # c"),
                                          mapping=Param(cfg.Dict(), "a mapping", default={"k": [1, 2]}))
    with pytest.raises(SystemExit):
        load_config(["--train.epochs", "7", "--print-config"])
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed) == config_as_dict() == {
        "train": {"epochs": 7, "warmup": 0}, "extra": {"text": "a: b # c", "mapping": {"k": [1, 2]}}}
    lines = printed.splitlines()
    assert "train:                              # loop" in lines
    assert "  epochs: 7                         # number of epochs (an int >= 1)" in lines
    assert "  text: 'a: b # c'                  # a text" in lines  # a str's kind is plain from its value
    (tmp_path / "printed.yaml").write_text(printed)
    load_config(["-C", str(tmp_path / "printed.yaml")])
    assert config_as_dict()["train"]["epochs"] == 7


# ------------------------------------------------------------------------------ Sections anywhere in a package

def test_load_config_imports_every_module_of_the_package(fresh_config, tmp_path, monkeypatch):
    package = tmp_path / "pkg_anywhere"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("raise SystemExit('__main__ must not be imported')\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text(textwrap.dedent("""
        from torchstrap_runtime.config import Int, Param, Section
        Section("deep", "declared in a sub-package").params(value=Param(Int(min=0), "a value", default=1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_config(["--deep.value", "4"], package="pkg_anywhere")
        assert config_as_dict()["deep"] == {"value": 4}
        assert import_package("pkg_anywhere") == ["pkg_anywhere", "pkg_anywhere.sub", "pkg_anywhere.sub.deep"]
    finally:
        for name in [n for n in sys.modules if n.startswith("pkg_anywhere")]:
            del sys.modules[name]


# ------------------------------------------------------------------------------ generated experiments

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("template") / "tpl")


def print_config(experiment: Experiment, *args: str, script: tuple[str, ...] = ("-m", "my_experiment.train")) -> str:
    done = experiment.run(*script, *args, "--print-config")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("task", TASKS)
def test_print_config_is_the_same_with_and_without_the_default_file(task, template, tmp_path):
    experiment = make_experiment(tmp_path, {"task": task, "use_slurm": task == "supervised"}, digits=False,
                                 template=template)
    without = print_config(experiment)
    assert print_config(experiment, "-C", "configs/default.yaml") == without
    resolved = yaml.safe_load(without)
    short = yaml.safe_load((experiment.path / "configs" / "default.yaml").read_text())
    assert len((experiment.path / "configs" / "default.yaml").read_text().splitlines()) < 40  # only what it sets
    assert set(short) <= {"training", "model", "optimizer", "scheduler", "criterion", "logging"}
    assert (resolved["training"]["epochs"], resolved["scheduler"]["warmup_epochs"], resolved["logging"]["monitor"]) \
        == (20, 1.0, "val_top1")
    criterion, optimizer = resolved["criterion"], resolved["optimizer"]
    if task == "ssl-multiview":
        assert (optimizer["name"], optimizer["lr"], optimizer["weight_decay"]) == ("adamw", 0.002, 0.0001)
        assert criterion["name"] == "" and criterion["params"] == {"embedding_size": 64, "num_clusters": [10, 20]}
        assert resolved["model"]["embedding_dim"] == 64 and resolved["ssl"]["recipe"] == "coke_double"
    elif task == "metric-learning":
        assert (criterion["name"], criterion["miner"]) == ("TripletMarginLoss", "TripletMarginMiner")
        assert criterion["miner_params"] == {"margin": 0.1, "type_of_triplets": "semihard"}
    else:
        assert (optimizer["name"], optimizer["lr"], criterion["name"]) == ("sgd", 0.1, "CrossEntropyLoss")
        assert yaml.safe_load(print_config(experiment, script=("scripts/submit.py",))) == resolved  # the launcher too


@pytest.fixture(scope="module")
def mine(template, tmp_path_factory) -> Experiment:
    """A supervised digits experiment whose trainer.py declares the section `mine`."""
    experiment = make_experiment(tmp_path_factory.mktemp("mine"), {"use_slurm": False}, template=template)
    trainer = experiment.path / "src" / "my_experiment" / "trainer.py"
    trainer.write_text(trainer.read_text() + textwrap.dedent("""

        from torchstrap_runtime.config import Int as _Int, Param as _Param, Section as _Section  # noqa: E402

        _Section("mine", "declared in trainer.py").params(value=_Param(_Int(min=0), "my own value", default=3))
    """))
    (experiment.root / "mine.yaml").write_text("mine:\n  value: 5\n")
    return experiment


def test_a_section_in_trainer_py_is_known_to_help_and_print_config(mine):
    done = mine.run("-m", "my_experiment.train", "--help")
    assert done.returncode == 0 and "--mine.value" in done.stdout and "my own value" in done.stdout, done.stderr
    printed = print_config(mine, "--mine.value", "7")
    assert yaml.safe_load(printed)["mine"] == {"value": 7} and "# my own value (an int >= 0)" in printed
    assert yaml.safe_load(print_config(mine, "-C", str(mine.root / "mine.yaml")))["mine"] == {"value": 5}
    bad = mine.run("-m", "my_experiment.train", "--mine.value", "-1")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "config error: mine.value: got '-1', expected an int >= 0 (on the command line)")


def test_a_section_in_trainer_py_is_recorded_in_config_json(mine):
    done = mine.run("-m", "my_experiment.train", "-C", str(mine.root / "mine.yaml"), "--data.train_path",
                    str(mine.train), "--data.val_path", str(mine.val), "--logging.progress", "false",
                    "--logging.folder", str(mine.root / "runs"), "--logging.run_id", "mine", "--training.epochs", "1",
                    "--mine.value", "9")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((mine.root / "runs" / "mine" / "config.json").read_text())
    assert record["config"]["mine"] == {"value": 9} and record["config"]["training"]["epochs"] == 1
    defaults = str((mine.path / "configs" / "default.yaml").resolve())
    assert record["config_files"] == [defaults, str((mine.root / "mine.yaml").resolve())]
