"""The template store an installed torchstrap generates and updates from: one tag per package version."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from experiments import template_repo
from torchstrap.generator.lifecycle import new_experiment, read_answers, update_experiment
from torchstrap.generator.template_repo import TEMPLATE_FILES, commit
from torchstrap.generator.template_source import CHECKOUT, git
from torchstrap.generator.template_store import (
    installed_requirement,
    is_store,
    packaged_template,
    requirement_from_direct_url,
    store_path,
    sync_store,
)


def packaged_copy(folder: Path) -> Path:
    """The template files as a wheel carries them (a plain folder, with what installing .py files adds)."""
    for name in TEMPLATE_FILES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    (folder / "template" / "scripts" / "__pycache__").mkdir()
    (folder / "template" / "scripts" / "__pycache__" / "show_augmentations.cpython-311.pyc").write_bytes(b"\0")
    return folder


def tags(store: Path) -> list[str]:
    return git("tag", "--list", cwd=store).stdout.split()


def test_store_location_follows_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert store_path() == tmp_path / "torchstrap" / "template"
    assert is_store(str(tmp_path / "torchstrap" / "template")) and not is_store(str(tmp_path))
    assert packaged_template() is None, "a checkout carries no packaged template: it is its own"
    assert packaged_template(packaged_copy(tmp_path / "pkg")) == tmp_path / "pkg"


def test_each_version_is_a_tag_and_syncing_again_changes_nothing(tmp_path):
    packaged, store = packaged_copy(tmp_path / "pkg"), tmp_path / "store"
    assert sync_store(packaged, "1.0.0", store) == (store, "v1.0.0")
    head = git("rev-parse", "HEAD", cwd=store).stdout
    assert sync_store(packaged, "1.0.0", store) == (store, "v1.0.0")
    assert git("rev-parse", "HEAD", cwd=store).stdout == head
    files = git("ls-tree", "-r", "--name-only", "v1.0.0", cwd=store).stdout.split("\n")
    assert "template/.gitignore" in files and "copier.yml" in files, "ignored names and dotfiles are kept"
    assert not any("__pycache__" in name for name in files)
    assert not git("status", "--porcelain", cwd=store).stdout, "the store has no uncommitted files"

    readme = packaged / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nA line of version 2.\n")
    assert sync_store(packaged, "2.0.0", store) == (store, "v2.0.0")
    assert tags(store) == ["v1.0.0", "v2.0.0"]
    readme.write_text(readme.read_text() + "\nRebuilt without a new version.\n")
    store_again, ref = sync_store(packaged, "2.0.0", store)
    assert ref != "v2.0.0" and git("describe", "--tags", ref, cwd=store).stdout.startswith("v2.0.0-1-g"), (
        "a tag keeps the files it named; a rebuilt package of the same version is the commit after it")


def test_new_and_update_from_the_store_keep_edits(tmp_path, monkeypatch):
    """What an installed package does: its template goes into the store, `new` and `update` use the store."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    packaged = packaged_copy(tmp_path / "pkg")
    store, ref = sync_store(packaged, "1.0.0")
    exp = new_experiment(tmp_path / "exp", {"project_name": "stored"}, template=str(store), vcs_ref=ref)
    assert read_answers(exp)["_commit"] == "v1.0.0" and is_store(read_answers(exp)["_src_path"])
    readme = exp / "README.md"
    readme.write_text(readme.read_text() + "\nMy notes.\n")
    commit(exp, "notes")
    template_readme = packaged / "template" / "README.md.jinja"
    template_readme.write_text("Version 2 first line.\n" + template_readme.read_text())
    _, ref = sync_store(packaged, "2.0.0")
    report = update_experiment(exp, vcs_ref=ref)
    assert report.version_after == "v2.0.0" and not report.conflicts
    text = readme.read_text()
    assert text.startswith("Version 2 first line.") and text.endswith("My notes.\n")


@pytest.mark.parametrize("direct_url, expected", [
    (None, "torchstrap==1.2.0"),
    ('{"url": "file:///wheels/torchstrap-1.2.0-cp311-cp311-linux_x86_64.whl", "archive_info": {}}',
     "torchstrap @ file:///wheels/torchstrap-1.2.0-cp311-cp311-linux_x86_64.whl"),
    ('{"url": "file:///src/torchstrap", "dir_info": {}}', "torchstrap @ file:///src/torchstrap"),
    ('{"url": "https://github.com/lab/torchstrap.git", "vcs_info": {"vcs": "git", "requested_revision": "v1.2.0",'
     ' "commit_id": "0123abcd"}}', "torchstrap @ git+https://github.com/lab/torchstrap.git@v1.2.0"),
    ('{"url": "https://github.com/lab/torchstrap.git", "vcs_info": {"vcs": "git", "commit_id": "0123abcd"}}',
     "torchstrap @ git+https://github.com/lab/torchstrap.git@0123abcd"),
], ids=["index", "wheel", "folder", "vcs-tag", "vcs-commit"])
def test_the_experiment_requires_the_torchstrap_that_generated_it(direct_url, expected):
    requirement = requirement_from_direct_url("torchstrap", "1.2.0", direct_url)
    assert requirement == expected and Requirement(requirement).name == "torchstrap"


def test_a_checkout_generates_experiments_that_require_its_folder(tmp_path):
    template = str(template_repo(tmp_path / "tpl"))
    exp = new_experiment(tmp_path / "exp", {"project_name": "needs-checkout"}, template=template)
    assert read_answers(exp)["torchstrap_requirement"] == installed_requirement() == f"torchstrap @ {CHECKOUT.as_uri()}"
    dependencies = tomllib.loads((exp / "pyproject.toml").read_text())["project"]["dependencies"]
    assert dependencies == [f"torchstrap @ {CHECKOUT.as_uri()}"]
