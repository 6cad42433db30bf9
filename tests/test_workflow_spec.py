"""docs/workflow.txt is the spec's hook order: the README and the generated trainer.py's docstring show it
verbatim and the trainer tests read it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jinja2
import pytest
import yaml

from workflow_spec import SPEC_FILE, spec_epoch, spec_hooks

ROOT = SPEC_FILE.parents[1]
README = ROOT / "README.md"
TASKS = yaml.safe_load((ROOT / "copier.yml").read_text())["task"]["choices"]


def test_readme_workflow_block_is_docs_workflow_txt():
    block = re.search(r"## The workflow\n\n```\w*\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md needs a '## The workflow' section with a code block"
    assert block.group(1) == SPEC_FILE.read_text(), "README's workflow block must equal docs/workflow.txt"


def trainer_template(task: str) -> Path:
    """The template file of `task`'s trainer.py."""
    return ROOT / "template" / "src" / "{{package_name}}" / f"{{% if task == '{task}' %}}trainer.py{{% endif %}}.jinja"


@pytest.mark.parametrize("task", TASKS)
def test_generated_trainer_docstring_shows_docs_workflow_txt(task):
    rendered = jinja2.Environment(keep_trailing_newline=True).from_string(trainer_template(task).read_text()).render(
        task=task, project_name="My Experiment", package_name="my_experiment")
    docstring = ast.get_docstring(ast.parse(rendered), clean=False)
    block = re.search(r"\nThe hook order \(torchstrap's docs/workflow.txt\):\n(.*?\n)\n", docstring, re.S)
    assert block, "the generated trainer.py's docstring needs its hook-order block"
    assert block.group(1) == SPEC_FILE.read_text(), "the trainer.py docstring's order must equal docs/workflow.txt"


def test_spec_hooks_are_read_in_order():
    init, loop = spec_hooks()
    assert init[0] == "initialize_model" and init[-1] == "initialize_logger" and "load_checkpoint" in init
    assert spec_epoch(2, 1) == ["before_train_epoch", "before_train_step", "train_step", "after_train_step",
                                "before_train_step", "train_step", "after_train_step", "after_train_epoch",
                                "before_eval_epoch", "before_eval_step", "eval_step", "after_eval_step",
                                "after_eval_epoch"]
    assert sorted(set(loop)) == sorted(set(spec_epoch(1, 1)))
