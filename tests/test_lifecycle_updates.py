"""`torchstrap update` on the real experiment template: no researcher edit is lost, template changes arrive.

Each test builds a template repository from this checkout (copier.yml + template/), tags v1.0.0,
generates an experiment (real copier, real git), makes the researcher's edits and commits them, changes
the template programmatically, tags v2.0.0 (and v3.0.0), then runs `torchstrap update` / `check`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from torchstrap.generator.cli import main, new_experiment
from torchstrap.generator.template_repo import build_template_repo, commit, tag
from torchstrap.generator.template_source import CHECKOUT, git

PKG = "my_experiment"  # package_name of the default answers
T_TRAINER = "template/src/{{package_name}}/{% if task == 'supervised' %}trainer.py{% endif %}.jinja"


def t_trainer(task: str) -> str:
    """The template file of `task`'s trainer.py."""
    return T_TRAINER.replace("'supervised'", repr(task))
T_CONFIG_PY = "template/src/{{package_name}}/config.py.jinja"
T_DATA = "template/src/{{package_name}}/data.py.jinja"
T_YAML = "template/configs/default.yaml.jinja"
TRAINER = f"src/{PKG}/trainer.py"
CONFIG_PY = f"src/{PKG}/config.py"
DATA = f"src/{PKG}/data.py"
YAML = "configs/default.yaml"
TASKS = yaml.safe_load((CHECKOUT / "copier.yml").read_text())["task"]["choices"]
OWN_METHODS = "    # --- add your own methods below this line ---\n"
OWN_SECTIONS = "# --- add your own sections below this line ---\n"  # config.py and default.yaml
OWN_DATA = "# --- add your own pipelines and loaders below this line ---\n"


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def tpl(tmp_path: Path) -> Path:
    repo = build_template_repo(tmp_path / "tpl")
    tag(repo, "v1.0.0")
    return repo


def generate(tpl: Path, tmp_path: Path, **answers) -> Path:
    return new_experiment(tmp_path / "exp", answers, template=str(tpl))


def sub(path: Path, pattern: str, repl: str, count: int = 1) -> None:
    """Regex-replace in a file; exactly `count` matches (0 = at least one) or the test is wrong.

    Template files take count=0: a line can appear once per task branch (`{% if task == ... %}`).
    """
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, flags=re.M)
    assert n == count if count else n > 0, f"{path.name}: {n} matches of {pattern!r}"
    path.write_text(new)


def insert_before(path: Path, anchor: str, text: str) -> None:
    content = path.read_text()
    assert content.count(anchor) == 1, f"{path.name}: anchor {anchor!r} not found exactly once"
    path.write_text(content.replace(anchor, text + anchor))


def insert_after(path: Path, anchor: str, text: str) -> None:
    content = path.read_text()
    assert content.count(anchor) == 1, f"{path.name}: anchor {anchor!r} not found exactly once"
    path.write_text(content.replace(anchor, anchor + text))


def hooks(trainer_text: str) -> list[str]:
    """Hook names, from the `# --- end of <hook> ---` anchors."""
    return re.findall(r"^    # --- end of (\w+) ---$", trainer_text, flags=re.M)


def edit_every_hook(exp: Path) -> list[str]:
    """The researcher adds a line at the end of every hook body; returns the lines added."""
    path = exp / TRAINER
    added = []
    for name in hooks(path.read_text()):
        line = f"        self.note_{name} = 'edited by the researcher'\n"
        insert_before(path, f"    # --- end of {name} ---\n", line)
        added.append(line)
    assert len(added) >= 6, "the trainer defines the hooks that carry its task's code"
    return added


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean_update(capsys, exp: Path, *args: str) -> str:
    code, out = cli(capsys, "update", str(exp), *args)
    assert code == 0, out
    assert "need your attention" not in out
    return out


def assert_python(exp: Path, relpath: str) -> None:
    compile((exp / relpath).read_text(), relpath, "exec")


def committed_and_checked(capsys, exp: Path) -> None:
    """After a clean update: commit, then `check` says up to date with exit code 0."""
    commit(exp, "torchstrap update")
    code, out = cli(capsys, "check", str(exp))
    assert code == 0 and "Up to date" in out, out


def version(exp: Path) -> str:
    return yaml.safe_load((exp / ".copier-answers.yml").read_text())["_commit"]


# ------------------------------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("task", TASKS)
def test_edit_every_hook_then_template_adds_a_hook(tpl, tmp_path, capsys, task):
    exp = generate(tpl, tmp_path, task=task)
    added = edit_every_hook(exp)
    own = "\n    def my_helper(self) -> int:\n        return 7\n"
    insert_after(exp / TRAINER, OWN_METHODS, own)
    commit(exp, "my hooks")

    new_hook = ("    def before_checkpoint(self) -> None:\n        \"\"\"New in v2: called before saving.\"\"\"\n"
                "        pass\n    # --- end of before_checkpoint ---\n\n")
    insert_before(tpl / t_trainer(task), OWN_METHODS, new_hook)
    sub(tpl / t_trainer(task), r'"""Called after modules\.eval\(\)', '"""(v2 docstring) Called after modules.eval()', count=0)
    tag(tpl, "v2.0.0", "v2: before_checkpoint hook")

    code, out = cli(capsys, "check", str(exp))
    assert code == 1 and "Behind the template by 1 version(s): v2.0.0" in out
    out = assert_clean_update(capsys, exp)
    assert "v1.0.0 -> v2.0.0" in out and TRAINER in out
    text = (exp / TRAINER).read_text()
    assert all(line in text for line in added), "a hook edit was lost"
    assert own in text and "def before_checkpoint(self)" in text and "(v2 docstring)" in text
    assert text.index("def before_checkpoint") < text.index(OWN_METHODS) < text.index("def my_helper")
    assert_python(exp, TRAINER)
    assert version(exp) == "v2.0.0"
    committed_and_checked(capsys, exp)


def test_template_rewrites_docstrings_researcher_replaced_every_body(tpl, tmp_path, capsys):
    """Docstrings are the template's, bodies the researcher's: the blank line between them keeps them apart."""
    exp = generate(tpl, tmp_path)
    path = exp / TRAINER
    names = hooks(path.read_text())
    for name in names:  # replace the whole body of every hook
        pattern = rf'(    def {name}\(self[^\n]*\n        """[^\n]*"""\n\n)(.*?)(    # --- end of {name} ---)'
        text, n = re.subn(pattern, rf"\1        self.mine_{name}()  # replaced\n\3", path.read_text(), flags=re.S)
        assert n == 1, name
        path.write_text(text)
    commit(exp, "my bodies")

    sub(tpl / T_TRAINER, r'^(        """[^\n]*?)\.?("""$)', r"\1 (v2 wording).\2", count=0)
    tag(tpl, "v2.0.0", "v2: better hook documentation")

    assert_clean_update(capsys, exp)
    text = path.read_text()
    assert all(f"        self.mine_{name}()  # replaced\n" in text for name in names)
    assert text.count("(v2 wording).") == len(names) and "super()." not in text.split("class Trainer")[1]
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)


def test_template_changes_imports(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    insert_after(exp / TRAINER, "from .models import build_model\n", "import numpy as np  # mine\n")
    sub(exp / TRAINER, r"^(        return loss)$", "        np.random.seed(self.step)  # mine\n\\1")
    commit(exp, "my imports")

    insert_after(tpl / T_TRAINER, "from __future__ import annotations\n\n", "import math\n\n")
    sub(tpl / T_TRAINER, r"^from \. import data$", "from . import data as data  # v2", count=0)
    tag(tpl, "v2.0.0", "v2: imports")

    assert_clean_update(capsys, exp)
    text = (exp / TRAINER).read_text()
    assert "import numpy as np  # mine\n" in text and "np.random.seed(self.step)  # mine" in text
    assert "import math\n" in text and "from . import data as data  # v2\n" in text
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)


def test_untouched_config_default_arrives_touched_one_stays(tpl, tmp_path, capsys):
    """The user changed warm-up (template keeps it); the template changes epochs (default.yaml) and the
    crop_seed default (config.py, where the experiment's own sections declare theirs)."""
    exp = generate(tpl, tmp_path)
    sub(exp / YAML, r"^(  warmup_epochs: )[0-9.]+", r"\g<1>2.5")
    commit(exp, "my warm-up")

    sub(tpl / T_YAML, r"^(  epochs: )\d+", r"\g<1>37", count=0)
    sub(tpl / T_CONFIG_PY, r"^(    crop_seed=Param\(OptionalInt\(min=0\), .*default=)\d+", r"\g<1>96", count=0)
    tag(tpl, "v2.0.0", "v2: longer training, another crop seed")

    assert_clean_update(capsys, exp)
    config = yaml.safe_load((exp / YAML).read_text())
    assert config["scheduler"]["warmup_epochs"] == 2.5  # mine stays
    assert config["training"]["epochs"] == 37 and "default=96" in (exp / CONFIG_PY).read_text()  # template's arrive
    committed_and_checked(capsys, exp)


def test_adjacent_config_values_merge_line_by_line(tpl, tmp_path, capsys):
    """The researcher sets num_classes, the template changes the model name on the line above: both arrive."""
    exp = generate(tpl, tmp_path)
    sub(exp / YAML, r"^(  num_classes: )\d+", r"\g<1>12")
    commit(exp, "my classes")
    sub(tpl / T_YAML, r"^(  name: )\{\{ model \}\}", r"\g<1>resnet-small", count=0)  # the model line above
    tag(tpl, "v2.0.0", "v2: model default")

    assert_clean_update(capsys, exp)
    model = yaml.safe_load((exp / YAML).read_text())["model"]
    assert (model["name"], model["num_classes"]) == ("resnet-small", 12)
    assert git("diff", "--name-only", "--diff-filter=U", cwd=exp).stdout == ""  # nothing left unmerged
    committed_and_checked(capsys, exp)


def test_touched_config_value_changed_by_template_is_a_conflict(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    sub(exp / YAML, r"^(  warmup_epochs: )[0-9.]+", r"\g<1>2.5")
    sub(exp / YAML, r"^(  epochs: )\d+", r"\g<1>3")
    commit(exp, "my warm-up and epochs")

    sub(tpl / T_YAML, r"^(  warmup_epochs: )[0-9.]+", r"\g<1>0.5", count=0)
    tag(tpl, "v2.0.0", "v2: warm-up")

    code, out = cli(capsys, "update", str(exp))
    assert code == 1 and f"{YAML}  (conflict markers)" in out
    text = (exp / YAML).read_text()
    mine, theirs = text.split("<<<<<<< before updating\n")[1].split(">>>>>>> after updating")[0].split("=======\n")
    assert "warmup_epochs: 2.5" in mine and "warmup_epochs: 0.5" in theirs
    assert "epochs: 3 " in text  # the other edit is kept outside the conflict
    code, out = cli(capsys, "check", str(exp))
    assert code == 1 and f"Conflict markers left in {YAML}" in out


def test_same_line_edited_conflict_reported_until_resolved(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    added = edit_every_hook(exp)
    sub(exp / TRAINER, r"^        return loss$", "        return self.my_loss(loss)  # mine")
    commit(exp, "my train_step")

    sub(tpl / T_TRAINER, r"^        return loss$", "        return loss  # v2: now with AMP", count=0)
    tag(tpl, "v2.0.0", "v2")

    code, out = cli(capsys, "update", str(exp))
    assert code == 1 and f"{TRAINER}  (conflict markers)" in out and "1 file(s) need your attention" in out
    text = (exp / TRAINER).read_text()
    mine, theirs = text.split("<<<<<<< before updating\n")[1].split(">>>>>>> after updating")[0].split("=======\n")
    assert mine.startswith("        return self.my_loss(loss)  # mine\n")  # with the adjacent edit of the same hook
    assert theirs == "        return loss  # v2: now with AMP\n"
    assert all(line in text for line in added)
    code, out = cli(capsys, "check", str(exp))
    assert code == 1 and f"Conflict markers left in {TRAINER}" in out

    resolved = re.sub(r"<<<<<<< before updating\n(.*?)=======\n.*?>>>>>>> after updating\n", r"\1", text, flags=re.S)
    (exp / TRAINER).write_text(resolved)
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)


def test_user_deleted_a_template_file(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    git("rm", "-q", "scripts/prepare_data.py", "Makefile", cwd=exp)
    commit(exp, "I don't use these")

    for name in ("template/scripts/prepare_data.py.jinja", "template/Makefile.jinja"):
        (tpl / name).write_text((tpl / name).read_text() + "\n# v2 line\n")
    sub(tpl / T_YAML, r"^(  epochs: )\d+", r"\g<1>37", count=0)
    tag(tpl, "v2.0.0", "v2")

    assert_clean_update(capsys, exp)
    assert not (exp / "scripts" / "prepare_data.py").exists() and not (exp / "Makefile").exists()
    assert yaml.safe_load((exp / YAML).read_text())["training"]["epochs"] == 37
    committed_and_checked(capsys, exp)


def test_user_added_modules_configs_and_sections(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    (exp / "src" / PKG / "my_losses.py").write_text("def my_loss(x):\n    return x.mean()\n")
    (exp / "configs" / "long_run.yaml").write_text("training:\n  epochs: 300\n")
    own_section = 'Section("ema", "my EMA").params(decay=Param(Float(), "decay", default=0.99))\n'
    insert_after(exp / CONFIG_PY, OWN_SECTIONS, own_section)
    insert_after(exp / YAML, OWN_SECTIONS, "ema:\n  decay: 0.99              # mine\n")
    commit(exp, "my modules")

    template_section = 'Section("v2", "new in v2").params(flag=Param(Bool(), "a v2 flag", default=False))\n\n'
    insert_before(tpl / T_CONFIG_PY, OWN_SECTIONS, template_section)
    (tpl / "template" / "src" / "{{package_name}}" / "callbacks.py").write_text('"""New in v2."""\n')
    tag(tpl, "v2.0.0", "v2: section and module")

    assert_clean_update(capsys, exp)
    assert (exp / "src" / PKG / "my_losses.py").read_text() == "def my_loss(x):\n    return x.mean()\n"
    assert (exp / "configs" / "long_run.yaml").read_text() == "training:\n  epochs: 300\n"
    config_py = (exp / CONFIG_PY).read_text()
    assert own_section in config_py and template_section in config_py
    assert config_py.index(template_section) < config_py.index(OWN_SECTIONS) < config_py.index(own_section)
    assert yaml.safe_load((exp / YAML).read_text())["ema"] == {"decay": 0.99}
    assert (exp / "src" / PKG / "callbacks.py").is_file()
    assert_python(exp, CONFIG_PY)
    committed_and_checked(capsys, exp)


def _slurm_files(exp: Path) -> set[str]:
    out = git("ls-files", "--cached", "--others", "--exclude-standard", cwd=exp).stdout.split()
    words = ("slurm", "sbatch", "submit")
    return {name for name in out if (exp / name).exists() and any(word in name.lower() for word in words)}


def test_answers_changed_at_update_add_and_remove_slurm_files(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path, use_slurm=False)
    assert _slurm_files(exp) == set()
    edit_every_hook(exp)
    commit(exp, "my hooks")

    assert_clean_update(capsys, exp, "-d", "use_slurm=true")
    slurm = _slurm_files(exp)
    assert slurm, "use_slurm=true at update should add the SLURM files"
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["use_slurm"] is True
    commit(exp, "slurm on")

    edited, untouched = sorted(slurm)[0], sorted(slurm)[1:]
    (exp / edited).write_text((exp / edited).read_text() + "\n# my cluster's partition\n")
    commit(exp, "my cluster")
    code, out = cli(capsys, "update", str(exp), "-d", "use_slurm=false")
    assert code == 0, out
    assert all(not (exp / name).exists() for name in untouched), "untouched SLURM files should go"
    assert "# my cluster's partition" in (exp / edited).read_text(), "an edited file must never vanish"
    assert "Kept your edited files" in out and edited in out
    assert all(f"self.note_{h} = " in (exp / TRAINER).read_text() for h in hooks((exp / TRAINER).read_text()))


def test_two_successive_updates(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    added = edit_every_hook(exp)
    commit(exp, "my hooks")

    sub(tpl / T_YAML, r"^(  epochs: )\d+", r"\g<1>37", count=0)
    tag(tpl, "v2.0.0", "v2")
    insert_before(tpl / T_TRAINER, OWN_METHODS, "    def on_v3(self) -> None:\n        pass\n    # --- end of on_v3 ---\n\n")
    sub(tpl / T_YAML, r"^(  monitor: )val_top1", r"\g<1>val_loss", count=0)
    tag(tpl, "v3.0.0", "v3")

    assert_clean_update(capsys, exp, "--vcs-ref", "v2.0.0")
    assert version(exp) == "v2.0.0"
    commit(exp, "update to v2")
    sub(exp / YAML, r"^(  warmup_epochs: )[0-9.]+", r"\g<1>2.5")
    commit(exp, "edit between updates")
    code, out = cli(capsys, "check", str(exp))
    assert code == 1 and "by 1 version(s): v3.0.0" in out

    out = assert_clean_update(capsys, exp)
    assert "v2.0.0 -> v3.0.0" in out and version(exp) == "v3.0.0"
    config = yaml.safe_load((exp / YAML).read_text())
    assert (config["training"]["epochs"], config["logging"]["monitor"], config["scheduler"]["warmup_epochs"]) == (
        37, "val_loss", 2.5)
    text = (exp / TRAINER).read_text()
    assert all(line in text for line in added) and "def on_v3(self)" in text
    committed_and_checked(capsys, exp)


def test_update_after_reformatting_a_file(tpl, tmp_path, capsys):
    """A formatter pass (quote style, wrapped signatures, spacing) changed many lines, renamed nothing."""
    exp = generate(tpl, tmp_path)
    path = exp / TRAINER
    sub(path, r'^    @param\("([\w.]+)"\)$', r"    @param('\1')", count=0)
    sub(path, r"^    def (\w+)\(self\) -> None:$", r"    def \1(\n        self,\n    ) -> None:", count=0)
    before = path.read_text()
    commit(exp, "ruff format")

    insert_before(tpl / T_TRAINER, OWN_METHODS, "    def on_v2(self) -> None:\n        pass\n    # --- end of on_v2 ---\n\n")
    sub(tpl / T_YAML, r"^(  epochs: )\d+", r"\g<1>37", count=0)
    tag(tpl, "v2.0.0", "v2")

    assert_clean_update(capsys, exp)
    text = path.read_text()
    assert "def on_v2(self)" in text
    assert text.replace("    def on_v2(self) -> None:\n        pass\n    # --- end of on_v2 ---\n\n", "") == before
    assert yaml.safe_load((exp / YAML).read_text())["training"]["epochs"] == 37
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)


def test_template_removes_files_edited_ones_are_kept(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    sub(exp / DATA, r"^(def val_pipelines)", "# my note on the validation pipeline\n\\1")
    commit(exp, "my data note")

    git("rm", "-q", "template/scripts/prepare_data.py.jinja", T_DATA, cwd=tpl)
    tag(tpl, "v2.0.0", "v2: data.py and prepare_data.py moved to the runtime")

    code, out = cli(capsys, "update", str(exp))
    assert code == 0, out
    assert not (exp / "scripts" / "prepare_data.py").exists()  # untouched: removed with the template
    assert "# my note on the validation pipeline" in (exp / DATA).read_text()  # edited: kept, and said so
    assert "Kept your edited files" in out and DATA in out
    committed_and_checked(capsys, exp)


def test_file_added_by_both_is_a_conflict_not_a_loss(tpl, tmp_path, capsys):
    exp = generate(tpl, tmp_path)
    (exp / "src" / PKG / "callbacks.py").write_text("def mine():\n    return 1\n")
    commit(exp, "my callbacks")
    (tpl / "template" / "src" / "{{package_name}}" / "callbacks.py").write_text("def templates():\n    return 2\n")
    tag(tpl, "v2.0.0", "v2: callbacks")

    code, out = cli(capsys, "update", str(exp))
    text = (exp / "src" / PKG / "callbacks.py").read_text()
    assert "def mine():\n    return 1\n" in text and "def templates():\n    return 2\n" in text
    assert code == 1 and f"src/{PKG}/callbacks.py  (conflict markers)" in out


def test_own_additions_at_file_ends_merge_with_template_additions(tpl, tmp_path, capsys):
    """Both sides append (config section, data pipeline): the anchor lines keep them apart, no conflict."""
    exp = generate(tpl, tmp_path)
    mine_yaml = "mine:\n  depth: 3                 # mine\n"
    mine_data = "\ndef my_pipelines() -> dict:\n    return val_pipelines()\n"
    insert_after(exp / YAML, OWN_SECTIONS, mine_yaml)
    insert_after(exp / DATA, OWN_DATA, mine_data)
    commit(exp, "my section and pipeline")

    theirs_yaml = "v2:\n  flag: false              # new in v2\n\n"
    theirs_data = "def tta_pipelines() -> dict:\n    \"\"\"New in v2.\"\"\"\n    return val_pipelines()\n\n\n"
    insert_before(tpl / T_YAML, OWN_SECTIONS, theirs_yaml)
    insert_before(tpl / T_DATA, OWN_DATA, theirs_data)
    tag(tpl, "v2.0.0", "v2: a section and a pipeline")

    assert_clean_update(capsys, exp)
    config = yaml.safe_load((exp / YAML).read_text())
    assert config["mine"] == {"depth": 3} and config["v2"] == {"flag": False}
    data = (exp / DATA).read_text()
    assert data.index("def tta_pipelines") < data.index(OWN_DATA) < data.index("def my_pipelines")
    assert_python(exp, DATA)
    committed_and_checked(capsys, exp)


def test_changing_the_task_answer_keeps_every_hook_edit(tpl, tmp_path, capsys):
    """`-d task=metric-learning` brings the other task's trainer.py: hook edits that the new task's code
    replaces come back as conflicts to resolve, never lost; the other files merge around the edits."""
    exp = generate(tpl, tmp_path)
    added = edit_every_hook(exp)
    sub(exp / YAML, r"^(  epochs: )\d+", r"\g<1>3")
    commit(exp, "my hooks and epochs")

    code, out = cli(capsys, "update", str(exp), "-d", "task=metric-learning")
    text = (exp / TRAINER).read_text()
    assert all(line in text for line in added), "a hook edit was lost"
    assert code == 1 and f"{TRAINER}  (conflict markers)" in out and "<<<<<<< before updating" in text
    assert "EmbeddingNet" in (exp / f"src/{PKG}/models.py").read_text()
    assert yaml.safe_load((exp / YAML).read_text())["training"]["epochs"] == 3
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["task"] == "metric-learning"


# ------------------------------------------------------------------ edits inside the real hook bodies


@pytest.mark.parametrize("task", TASKS)
def test_edits_inside_real_bodies_merge_with_template_changes(tpl, tmp_path, capsys, task):
    """The researcher changes the loss, the optimizer's groups and the metrics inside the real bodies; the
    template reworks other lines of the same hooks: both arrive, without a conflict."""
    exp = generate(tpl, tmp_path, task=task)
    path = exp / TRAINER
    mine = ["        return loss + 1e-4 * sum(p.pow(2).sum() for p in self.model.parameters())  # mine\n",
            "        self.model = build_model(name, num_classes, image_size).float()  # mine\n",
            "        self.epoch_record[\"val_mine\"] = 1.0  # mine\n"]
    sub(path, r"^        return loss\n", mine[0])
    sub(path, r"^        self\.model = build_model\(name, num_classes, image_size\)\n", mine[1])
    insert_before(path, "    # --- end of after_eval_epoch ---\n", mine[2])
    commit(exp, "my loss, optimizer groups and metric")

    theirs = ["        # self.data: the batch (v2 wording)\n", "        inputs, labels = self.to_device(self.data)  # v2\n"]
    sub(tpl / t_trainer(task), r"^        # self\.data: the batch.*\n", theirs[0], count=0)
    sub(tpl / t_trainer(task), r"^        inputs, labels = self\.to_device\(self\.data\)\n", theirs[1], count=0)
    sub(tpl / t_trainer(task), r'"""Called after modules\.eval\(\)', '"""Called after modules.eval() (v2 docstring; ', count=0)
    tag(tpl, "v2.0.0", "v2: comments in the real bodies")

    assert_clean_update(capsys, exp)
    text = path.read_text()
    assert all(line in text for line in mine), "an edit inside a real body was lost"
    assert all(line in text for line in theirs) and "(v2 docstring; " in text
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)


def test_researcher_line_next_to_a_changed_template_line_is_merged(tpl, tmp_path, capsys):
    """The researcher changes the loss line, v2 changes the forward line right above it: git (and so plain
    copier) sees one conflict; our line-by-line merge takes each line from the side that changed it."""
    exp = generate(tpl, tmp_path)
    path = exp / TRAINER
    base = path.read_text()
    mine = "            loss = self.criterion(outputs, labels) + 0.1 * outputs.pow(2).mean()  # mine\n"
    sub(path, r"^            loss = self\.criterion\(outputs, labels\)\n(?=        return loss)", mine)
    ours = path.read_text()
    commit(exp, "my loss")

    theirs_line = "            outputs = self.model(inputs)  # v2: logits\n"
    sub(tpl / T_TRAINER, r"^            outputs = self\.model\(inputs\)\n", theirs_line, count=1)
    tag(tpl, "v2.0.0", "v2: a comment on the forward")
    theirs = (new_experiment(tmp_path / "fresh_v2", {}, template=str(tpl)) / TRAINER).read_text()
    assert theirs_line in theirs

    files = []
    for name, content in (("ours", ours), ("base", base), ("theirs", theirs)):
        files.append(tmp_path / name)
        files[-1].write_text(content)
    plain = git("merge-file", "-p", "--diff3", *map(str, files), cwd=tmp_path, check=False)
    assert plain.returncode == 1 and "<<<<<<<" in plain.stdout, "git alone should see a conflict here"

    assert_clean_update(capsys, exp)
    text = path.read_text()
    assert theirs_line + mine in text and "<<<<<<<" not in text
    assert_python(exp, TRAINER)
    committed_and_checked(capsys, exp)
