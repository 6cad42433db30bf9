"""torchstrap_runtime.config: each test pins down one fastargs 1.2.0 trap or one promise of the API."""

from __future__ import annotations

import inspect
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import fastargs
import pytest
from fastargs.state import set_current_config

from torchstrap_runtime import config as C
from torchstrap_runtime.config import (Bool, ConfigError, Dict, Float, Int, ListOfInt, OneOf, OptionalInt, Param,
                                       Section, Str, config_as_dict, get_config, get_value, load_config, param,
                                       reset_config, set_values)

REPO = Path(__file__).resolve().parents[1]


def declare() -> None:
    """The sections these tests use (declared again after every reset)."""
    Section("optimizer", "the optimizer").params(
        lr=Param(Float(), "learning rate", default=0.1),
        momentum=Param(Float(), "SGD momentum", default=0.9),
        name=Param(OneOf(["sgd", "adam"]), "optimizer name", default="sgd"),
    )
    Section("training", "the loop").params(
        epochs=Param(Int(), "number of epochs", default=10),
        eval_only=Param(Bool(), "only evaluate", default=False),
        seed=Param(OptionalInt(), "seed; none = fresh", default=0),
        milestones=Param(ListOfInt(), "lr decay epochs", default=[30, 60]),
    )
    Section("criterion", "the loss").params(
        params=Param(Dict(), "loss keyword arguments", default={}),
    )


@pytest.fixture(autouse=True)
def fresh_config():
    """A fresh config with `declare()`d sections; the previous global config is put back afterwards."""
    previous = get_config()
    reset_config()
    declare()
    yield
    set_current_config(previous)


# module-level decorated functions (pickling needs them importable)
@param("optimizer.lr")
@param("optimizer.momentum", alias="beta")
def make_optimizer(weights: list, lr: float, beta: float = 0.0) -> tuple:
    """Pretend to build an optimizer."""
    return weights, lr, beta


@param("training.epochs")
def count_epochs(epochs: int) -> int:
    return epochs


def run_script(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)


SCRIPT_HEADER = """
    from torchstrap_runtime.config import Section, Param, Float, Bool, load_config, config_as_dict
    Section("optimizer", "the optimizer").params(lr=Param(Float(), "learning rate", default=0.1))
    Section("training", "the training loop").params(eval_only=Param(Bool(), "only evaluate", default=False))
"""


# ---------------------------------------------------------------------------------------------------------- Bool

@pytest.mark.parametrize("text,expected", [
    ("False", False), ("false", False), ("0", False), ("no", False), ("OFF", False), (False, False), (0, False),
    ("True", True), ("true", True), ("1", True), ("yes", True), ("On", True), (True, True), (1, True),
])
def test_bool_words(text, expected):
    assert Bool().check(text) is expected
    load_config(["--training.eval_only", str(text)])
    assert get_value("training.eval_only") is expected


def test_bool_bad_value_names_the_value(capsys):
    with pytest.raises(ValueError, match="maybe"):
        Bool().check("maybe")
    with pytest.raises(SystemExit) as e:
        load_config(["--training.eval_only", "maybe"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "training.eval_only" in err and "'maybe'" in err and "boolean" in err


def test_plain_fastargs_bool_param_is_fixed():
    """fastargs's own Param(bool) uses bool("false") == True; declared through our Config it is strict."""
    Section("extra").params(flag=fastargs.Param(bool, "a flag", default=True))
    load_config(["--extra.flag", "false"])
    assert get_value("extra.flag") is False


def test_plain_fastargs_checkers_are_made_strict():
    """fastargs's Param(int) takes 3.5 as 3 and its OneOf([1, 2]) refuses the command line's string "2"."""
    Section("extra").params(n=fastargs.Param(int, "an int", default=1),
                            k=fastargs.Param(fastargs.validation.OneOf([1, 2]), "a choice", default=1))
    load_config(["--extra.n", "3", "--extra.k", "2"])
    assert (get_value("extra.n"), get_value("extra.k")) == (3, 2)
    with pytest.raises(ConfigError, match="extra.n: got 3.5, expected an int"):
        set_values({"extra.n": 3.5})


def test_environment_is_not_read(monkeypatch):
    """fastargs's collect_env_variables reads a variable named "optimizer.lr"; ours come only from argv and files."""
    monkeypatch.setenv("optimizer.lr", "0.7")
    load_config([])
    assert get_value("optimizer.lr") == 0.1


def test_bare_flag_means_true():
    load_config(["--training.eval_only", "--optimizer.lr", "0.5"])
    assert get_value("training.eval_only") is True and get_value("optimizer.lr") == 0.5


# ---------------------------------------------------------------------------------------------- files and CLI

def write_config(tmp_path: Path, kind: str, data: dict) -> Path:
    if kind == "json":
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(data))
    else:
        import yaml
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kind", ["yaml", "json"])
def test_precedence_defaults_file_cli(tmp_path, kind):
    path = write_config(tmp_path, kind, {"optimizer": {"lr": 0.5, "name": "adam"}, "training.epochs": 3})
    load_config(["-C", str(path), "--optimizer.lr", "0.01"])
    assert get_value("optimizer.momentum") == 0.9  # default
    assert get_value("optimizer.name") == "adam"  # file
    assert get_value("training.epochs") == 3  # file, dotted key
    assert get_value("optimizer.lr") == 0.01  # CLI over file


def test_later_file_wins_and_config_argument_is_lowest(tmp_path):
    first = write_config(tmp_path, "json", {"training": {"epochs": 3, "seed": 5}})
    second = tmp_path / "second.yml"
    second.write_text("training:\n  epochs: 4\n")
    load_config(["--config-file", str(first), f"--config-file={second}"],
                config={"training": {"epochs": 1, "seed": 1}, "optimizer": {"lr": 0.3}})
    assert (get_value("training.epochs"), get_value("training.seed"), get_value("optimizer.lr")) == (4, 5, 0.3)


def test_flag_from_file_not_reset_by_cli(tmp_path):
    """fastargs's store_true default (False) overwrites a flag the config file set to true."""
    path = tmp_path / "cfg.yaml"
    path.write_text("training:\n  eval_only: true\n")
    load_config(["-C", str(path), "--training.epochs", "2"])
    assert get_value("training.eval_only") is True
    load_config(["-C", str(path), "--training.eval_only", "false"])
    assert get_value("training.eval_only") is False


def test_unknown_key_in_file_suggests(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("optimizer:\n  lrr: 0.1\n")
    with pytest.raises(SystemExit) as e:
        load_config(["-C", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optimizer.lrr'" in err and str(path) in err and "did you mean 'optimizer.lr'" in err


def test_unknown_key_on_cli_suggests(capsys):
    with pytest.raises(SystemExit) as e:
        load_config(["--optimizer.momentun", "0.5", "--training.epochs", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'optimizer.momentun'" in err and "did you mean 'optimizer.momentum'" in err
    assert "training.epochs: got 'x', expected an int" in err  # every problem is reported at once


def test_unknown_section_in_file(tmp_path, capsys):
    path = write_config(tmp_path, "json", {"optimiser": {"lr": 0.1}})
    with pytest.raises(SystemExit):
        load_config(["-C", str(path)])
    assert "unknown config key 'optimiser.lr'" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as e:
        load_config(["-C", str(missing)])
    assert e.value.code == 2
    assert f"config file '{missing}' cannot be read: No such file or directory" in capsys.readouterr().err


def test_top_level_must_be_a_mapping(tmp_path, capsys):
    ini = tmp_path / "cfg.ini"
    ini.write_text("[optimizer]\n")
    lst = tmp_path / "cfg.yaml"
    lst.write_text("- 1\n- 2\n")
    for path, message in [(ini, "got list"), (lst, "expected a mapping")]:
        with pytest.raises(SystemExit):
            load_config(["-C", str(path)])
        assert message in capsys.readouterr().err


def test_nested_mapping_values_from_file_and_cli(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("criterion:\n  params: {margin: 0.2, swap: true}\n")
    load_config(["-C", str(path)])
    assert get_value("criterion.params") == {"margin": 0.2, "swap": True}
    load_config(["--criterion.params", '{"margin": 0.1}'])
    assert get_value("criterion.params") == {"margin": 0.1}
    with pytest.raises(SystemExit):
        load_config(["--criterion.params", "[1, 2]"])


def test_optional_int_and_list_of_int(tmp_path):
    load_config(["--training.seed", "none", "--training.milestones", "3,5"])
    assert get_value("training.seed") is None and get_value("training.milestones") == [3, 5]
    path = tmp_path / "cfg.yaml"
    path.write_text("training:\n  seed: null\n  milestones: [1, 2]\n")
    load_config(["-C", str(path)])
    assert get_value("training.seed") is None and get_value("training.milestones") == [1, 2]
    load_config(["--training.seed", "7", "--training.milestones", "[4]"])
    assert get_value("training.seed") == 7 and get_value("training.milestones") == [4]
    with pytest.raises(ValueError):
        OptionalInt().check("seven")


def test_required_value_missing(capsys):
    Section("data", "the data").params(path=Param(Str(), "dataset file", required=True))
    with pytest.raises(SystemExit) as e:
        load_config([])
    assert e.value.code == 2
    assert "data.path: missing required value" in capsys.readouterr().err
    load_config(["--data.path", "x.beton"])
    assert get_value("data.path") == "x.beton"


def test_validation_error_exits_nonzero_before_work(tmp_path):
    result = run_script(tmp_path, SCRIPT_HEADER + """
    load_config()
    print("WORK STARTED")
    """, "--optimizer.lr", "abc")
    assert result.returncode == 2, result.stderr
    assert "WORK STARTED" not in result.stdout
    assert "optimizer.lr: got 'abc', expected a float" in result.stderr


def test_help_lists_sections_and_params(tmp_path):
    result = run_script(tmp_path, SCRIPT_HEADER + """
    load_config(description="my experiment")
    print("WORK STARTED")
    """, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "WORK STARTED" not in out
    for text in ["my experiment", "optimizer.lr", "learning rate", "0.1", "a float", "training.eval_only",
                 "the training loop", "--config-file"]:
        assert text in out, text


# ------------------------------------------------------------------------------------------------ decorators

def test_decorator_keeps_metadata():
    assert make_optimizer.__name__ == "make_optimizer"
    assert make_optimizer.__doc__ == "Pretend to build an optimizer."
    assert make_optimizer.__wrapped__.__name__ == "make_optimizer"
    assert list(inspect.signature(make_optimizer).parameters) == ["weights", "lr", "beta"]


def test_hand_given_values_win():
    load_config(["--optimizer.lr", "0.5"])
    assert make_optimizer([1]) == ([1], 0.5, 0.9)
    assert make_optimizer([1], 1.0) == ([1], 1.0, 0.9)  # positional
    assert make_optimizer([1], lr=2.0, beta=0.1) == ([1], 2.0, 0.1)  # keyword
    assert make_optimizer([1], 3.0, 0.2) == ([1], 3.0, 0.2)
    assert count_epochs() == 10 and count_epochs(4) == 4


def test_section_and_param_on_methods():
    class Trainer:
        scale = 2

        @param("optimizer.lr")
        def lr_times_scale(self, lr):
            return lr * self.scale

        @param("training.epochs")
        @param("training.eval_only")
        def plan(self, epochs, eval_only):
            return epochs, eval_only

        @classmethod
        @param("training.epochs")
        def epochs_of(cls, epochs):
            return cls.scale * epochs

    load_config(["--optimizer.lr", "0.25"])
    trainer = Trainer()
    assert trainer.lr_times_scale() == 0.5 and trainer.lr_times_scale(1.0) == 2.0
    assert trainer.plan() == (10, False) and trainer.plan(eval_only=True) == (10, True)
    assert Trainer.epochs_of() == 20
    assert Trainer.lr_times_scale.__name__ == "lr_times_scale"


def test_param_errors():
    with pytest.raises(TypeError, match="no argument 'lr'"):
        param("optimizer.lr")(lambda x: x)

    @param("optimizer.lrr")
    def typo(lrr):
        return lrr

    with pytest.raises(ConfigError, match="did you mean 'optimizer.lr'"):
        typo()


def test_decorated_function_pickles():
    load_config(["--optimizer.lr", "0.5"])
    again = pickle.loads(pickle.dumps(make_optimizer))
    assert again is make_optimizer and again([2]) == ([2], 0.5, 0.9)


def test_decorated_function_through_spawn_pool(tmp_path):
    (tmp_path / "exp_config.py").write_text(textwrap.dedent("""
        from torchstrap_runtime.config import Section, Param, Float, param
        Section("optimizer").params(lr=Param(Float(), "learning rate", default=0.1))

        @param("optimizer.lr")
        def scaled(x, lr):
            return x * lr
    """))
    result = run_script(tmp_path, """
    import multiprocessing as mp
    from torchstrap_runtime.config import load_config, config_as_dict, set_values
    from exp_config import scaled

    if __name__ == "__main__":
        load_config(["--optimizer.lr", "3"])
        with mp.get_context("spawn").Pool(2, initializer=set_values, initargs=(config_as_dict(),)) as pool:
            print(pool.map(scaled, [1, 2]), pool.starmap(scaled, [(1, 10.0)]))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[3.0, 6.0] [10.0]"


# ------------------------------------------------------------------------------------------------ state

def test_config_as_dict_includes_defaults():
    load_config(["--optimizer.lr", "0.5", "--criterion.params", '{"margin": 0.1}'])
    result = config_as_dict()
    assert result == {
        "optimizer": {"lr": 0.5, "momentum": 0.9, "name": "sgd"},
        "training": {"epochs": 10, "eval_only": False, "seed": 0, "milestones": [30, 60]},
        "criterion": {"params": {"margin": 0.1}},
    }
    assert json.loads(json.dumps(result)) == result
    load_config([], config=result)  # round trip
    assert config_as_dict() == result


def test_set_values_validates_and_is_atomic():
    set_values({"optimizer": {"lr": "0.3"}, "training.epochs": 2})
    assert get_value("optimizer.lr") == 0.3 and get_value("training.epochs") == 2
    with pytest.raises(ConfigError, match="training.epochs: got 'abc', expected an int"):
        set_values({"optimizer.lr": 0.7, "training.epochs": "abc"})
    with pytest.raises(ConfigError, match="did you mean 'training.epochs'"):
        set_values({"training.epoch": 3})
    assert get_value("optimizer.lr") == 0.3 and get_value("training.epochs") == 2  # nothing half-set


def test_redeclare_and_reset():
    Section("optimizer", "again").params(lr=Param(Float(), "learning rate", default=0.2))
    assert get_value("optimizer.lr") == 0.2  # last declaration wins
    assert list(get_config().entries).count(("optimizer", "lr")) == 1
    set_values({"optimizer.lr": 0.4})
    reset_config(keep_sections=True)
    assert get_value("optimizer.lr") == 0.2
    reset_config()
    with pytest.raises(ConfigError, match="unknown config key 'optimizer.lr'"):
        get_value("optimizer.lr")
    declare()
    assert get_value("optimizer.lr") == 0.1


def test_dict_defaults_are_copied_never_shared():
    default = get_value("criterion.params")
    default["mutated"] = True
    assert get_value("criterion.params") == {}


def test_unparsable_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("optimizer: [unclosed\n")
    with pytest.raises(SystemExit):
        load_config(["-C", str(path)])
    assert f"config file '{path}' could not be parsed" in capsys.readouterr().err


def test_param_above_staticmethod_and_classmethod():
    class Box:
        factor = 3

        @param("training.epochs")
        @staticmethod
        def epochs(epochs):
            return epochs

        @param("training.epochs")
        @classmethod
        def scaled(cls, epochs):
            return cls.factor * epochs

    assert Box.epochs() == 10 and Box().epochs(2) == 2 and Box.scaled() == 30 and Box().scaled(1) == 3


def test_config_object_pickles():
    load_config(["--optimizer.lr", "0.5"])
    again = pickle.loads(pickle.dumps(get_config()))
    assert again["optimizer.lr"] == 0.5 and again.as_dict() == config_as_dict()


# ------------------------------------------------------------------------------------------------ ranges

@pytest.mark.parametrize("checker, good, bad, expected", [
    (Int(min=1), ["1", 5, "1e3", 7.0], ["0", -3, "2.5", True, "nan"], "an int >= 1"),
    (Float(min=0, min_exclusive=True), ["1e-3", 2, "0.5"], ["0", "-1", "nan", False], "a float > 0"),
    (Float(min=0, max=1, max_exclusive=True), ["0", 0.9], ["1", "1.5", "-0.1"], "a float in [0, 1)"),
    (Float(min=0, max=1, min_exclusive=True), ["1", 0.1], ["0"], "a float in (0, 1]"),
    (OptionalInt(min=0), ["0", "None", "NULL", None], ["-1"], "an int >= 0 or none"),
    (ListOfInt(min=1), ["30,60", "[1]", [2, 3], ""], ["0,1", "[1, -1]"], "a list of (an int >= 1)"),
])
def test_ranges(checker, good, bad, expected):
    assert checker.help() == expected
    for value in good:
        checker.check(value)
    for value in bad:
        with pytest.raises(ValueError):
            checker.check(value)


def test_every_bad_value_is_one_sentence_with_key_value_and_range(capsys):
    Section("loop", "ranges").params(epochs=Param(Int(min=1), "epochs", default=1),
                                     lr=Param(Float(min=0, min_exclusive=True), "learning rate", default=0.1))
    with pytest.raises(SystemExit) as e:
        load_config(["--loop.epochs", "-3", "--loop.lr", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "config error: loop.epochs: got '-3', expected an int >= 1 (on the command line)",
        "config error: loop.lr: got '0', expected a float > 0 (on the command line)"]
    with pytest.raises(ConfigError, match=r"loop.epochs: got 0, expected an int >= 1 \(set_values\)"):
        set_values({"loop.epochs": 0})


def test_standard_sections_defaults_are_in_range():
    from torchstrap_runtime.sections import declare_standard_sections

    declare_standard_sections()
    load_config([])
    assert get_config().errors() == []
    assert get_config().entries[("optimizer", "momentum")].checker.help() == "a float in [0, 1)"


def test_print_config_prints_yaml_and_exits_0(capsys):
    import yaml

    with pytest.raises(SystemExit) as e:
        load_config(["--optimizer.lr", "0.5", "--print-config"])
    assert e.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "optimizer": {"lr": 0.5, "momentum": 0.9, "name": "sgd"},
        "training": {"epochs": 10, "eval_only": False, "seed": 0, "milestones": [30, 60]},
        "criterion": {"params": {}}}
