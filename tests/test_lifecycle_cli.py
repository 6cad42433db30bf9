"""`torchstrap new / update / check`: behaviour and error sentences, on a tiny real git template.

The tiny template (built here, real copier, real git, real tags) keeps these tests independent of the
experiment template's content; tests/test_lifecycle_updates.py runs the real template.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from torchstrap.generator.cli import main, new_experiment
from torchstrap.generator.template_repo import commit, edit, tag
from torchstrap.generator import template_source
from torchstrap.generator.template_source import CHECKOUT, git

TINY_COPIER = """\
_subdirectory: template
_templates_suffix: .jinja
_answers_file: .copier-answers.yml
project_name:
  type: str
  default: my-experiment
task:
  type: str
  choices: [supervised, ssl-multiview]
  default: supervised
use_slurm:
  type: bool
  default: true
"""
ANSWERS = "# Changes here will be overwritten by Copier\n{{ _copier_answers|to_nice_yaml -}}\n"
TRAINER = "def hook():\n    pass\n# --- anchor\n"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A git template repository tagged v1.0.0."""
    repo = tmp_path / "tiny"
    (repo / "template" / "src").mkdir(parents=True)
    (repo / "copier.yml").write_text(TINY_COPIER)
    (repo / "template" / "{{ _copier_conf.answers_file }}.jinja").write_text(ANSWERS)
    (repo / "template" / "src" / "trainer.py").write_text(TRAINER)
    slurm = repo / "template" / "{% if use_slurm %}slurm{% endif %}"
    slurm.mkdir()
    (slurm / "run.sh.jinja").write_text("sbatch {{ project_name }}\n")
    (slurm / "submit.py").write_text("import submitit\n")
    git("init", "-q", "-b", "main", cwd=repo)
    tag(repo, "v1.0.0", "v1")
    return repo


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_new_makes_committed_git_project(tiny, tmp_path, capsys):
    code, out, err = run(capsys, "new", str(tmp_path / "exp"), "--template", str(tiny), "-d", "task=ssl-multiview")
    exp = tmp_path / "exp"
    assert code == 0, err
    assert "Next steps" in out and f"cd {exp}" in out
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v1.0.0" and answers["task"] == "ssl-multiview" and answers["_src_path"] == str(tiny)
    assert (exp / "slurm" / "run.sh").read_text() == "sbatch my-experiment\n"
    assert git("status", "--porcelain", cwd=exp).stdout == ""  # everything committed
    assert git("log", "--format=%s", cwd=exp).stdout.strip() == "Generate from torchstrap template v1.0.0"
    code, out, _ = run(capsys, "check", str(exp / "src"))  # from a subfolder: the project root is found
    assert code == 0 and f"{exp}: template v1.0.0 from {tiny}" in out and "latest release (v1.0.0)" in out


def test_untagged_template_generates_from_its_committed_head(tiny, tmp_path, capsys):
    git("tag", "-d", "v1.0.0", cwd=tiny)
    (tiny / "template" / "src" / "trainer.py").write_text("uncommitted = True\n")  # never used
    exp = new_experiment(tmp_path / "exp", {}, template=str(tiny))
    head = git("rev-parse", "--short", "HEAD", cwd=tiny).stdout.strip()
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["_commit"] == head
    assert (exp / "src" / "trainer.py").read_text() == TRAINER
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 0 and "no release tag yet" in out


def test_main_leaves_the_tempdir_setting_alone(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TMPDIR", raising=False)
    before = tempfile.tempdir
    assert run(capsys, "new", str(tmp_path / "exp"), "--template", str(tiny))[0] == 0
    assert tempfile.tempdir == before


def test_new_python_api_and_vcs_ref(tiny, tmp_path):
    edit(tiny, "template/src/trainer.py", "pass", "return 2")
    tag(tiny, "v2.0.0", "v2")
    exp = new_experiment(tmp_path / "old", {"use_slurm": False}, template=str(tiny), vcs_ref="v1.0.0")
    assert exp == tmp_path / "old"
    assert "pass" in (exp / "src" / "trainer.py").read_text()
    assert not (exp / "slurm").exists()
    latest = new_experiment(tmp_path / "latest", {}, template=str(tiny))
    assert "return 2" in (latest / "src" / "trainer.py").read_text()


def test_template_from_environment_variable(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHSTRAP_TEMPLATE", str(tiny))
    code, _, err = run(capsys, "new", str(tmp_path / "exp"))
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "exp" / ".copier-answers.yml").read_text())["_src_path"] == str(tiny)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "optimizer=adam"], "Unknown answer key 'optimizer'; the template asks: project_name, task, use_slurm."),
        (["-d", "task=reinforcement"], "Invalid answer: Invalid choice for 'task'"),
        (["-d", "use_slurm=maybe"], "Invalid answer: use_slurm must be true or false, got 'maybe'."),
        (["-d", "task"], "-d expects key=value, got 'task'."),
        (["--vcs-ref", "v9.9.9"], "has no version/ref 'v9.9.9'"),
        (["--template", "/nonexistent/template"], "is not reachable: no such directory, and not a git URL."),
        (["--template", "file:///nonexistent/template.git"], "is not reachable"),
    ],
)
def test_new_errors_are_sentences(tiny, tmp_path, capsys, args, message):
    argv = ["new", str(tmp_path / "exp")] + (args if "--template" in args else ["--template", str(tiny), *args])
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("torchstrap new: ") and message in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "exp").exists()  # nothing half-generated


def test_new_refuses_plain_folder_template_and_nonempty_destination(tiny, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "copier.yml").write_text(TINY_COPIER)
    code, _, err = run(capsys, "new", str(tmp_path / "exp"), "--template", str(plain))
    assert code == 2 and "is not the root of a git repository" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "new", str(tmp_path / "full"), "--template", str(tiny))
    assert code == 2 and "already exists and is not empty" in err
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, "new", str(tmp_path / "full" / "notes.txt" / "exp"), "--template", str(tiny))
    assert code == 2 and "notes.txt is a file, not a folder" in err


def test_update_and_check_errors(tiny, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    for command in ("update", "check"):
        code, _, err = run(capsys, command, str(plain))
        assert code == 2 and "is not a git repository" in err, err
    git("init", "-q", cwd=plain)
    for command in ("update", "check"):
        code, _, err = run(capsys, command, str(plain))
        assert code == 2 and "has no .copier-answers.yml" in err, err

    exp = new_experiment(tmp_path / "exp", {}, template=str(tiny))
    (exp / "src" / "trainer.py").write_text("def hook():\n    return 1\n# --- anchor\n")
    (exp / "notes.md").write_text("untracked\n")
    code, _, err = run(capsys, "update", str(exp))
    assert code == 2 and "has uncommitted changes" in err and "src/trainer.py" in err and "notes.md" in err
    assert "return 1" in (exp / "src" / "trainer.py").read_text()  # untouched

    commit(exp, "mine")
    code, _, err = run(capsys, "update", str(exp), "-d", "gpu=true")
    assert code == 2 and "Unknown answer key 'gpu'" in err
    assert git("status", "--porcelain", cwd=exp).stdout == ""

    clone = tmp_path / "clone"
    git("clone", "-q", str(tiny), str(clone))
    (tiny / ".git").rename(tiny / "moved.git")  # the template disappears
    for command in ("update", "check"):
        code, out, err = run(capsys, command, str(exp))
        assert code == 2 and f"The template {tiny} is not reachable" in err, err
        assert "Traceback" not in out + err
    code, out, _ = run(capsys, "check", str(exp), "--template", str(clone))  # e.g. the template's URL in CI
    assert code == 0 and f"from {clone}" in out and "latest release (v1.0.0)" in out


def test_update_merges_conflicts_and_check_flags_them(tiny, tmp_path, capsys):
    exp = new_experiment(tmp_path / "exp", {}, template=str(tiny))
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 0 and "Up to date" in out

    (exp / "src" / "trainer.py").write_text("def hook():\n    return 'mine'\n# --- anchor\n")
    commit(exp, "my hook")
    (tiny / "template" / "src" / "trainer.py").write_text("import os\n\n\ndef hook():\n    pass\n# --- anchor\n")
    tag(tiny, "v1.1.0", "imports")
    edit(tiny, "template/src/trainer.py", "    pass", "    return 'template'")
    tag(tiny, "v2.0.0", "hook changes")
    tag(tiny, "v3.0.0rc1", "a pre-release is not a release")

    code, out, _ = run(capsys, "check", str(exp))
    assert code == 1 and "Behind the template by 2 version(s): v1.1.0, v2.0.0." in out

    code, out, _ = run(capsys, "update", str(exp), "--vcs-ref", "v1.1.0")
    assert code == 0, out
    assert (exp / "src" / "trainer.py").read_text() == "import os\n\n\ndef hook():\n    return 'mine'\n# --- anchor\n"
    commit(exp, "update to v1.1.0")

    code, out, _ = run(capsys, "update", str(exp))
    assert code == 1
    assert "v1.1.0 -> v2.0.0" in out and "src/trainer.py  (conflict markers)" in out
    text = (exp / "src" / "trainer.py").read_text()
    assert "<<<<<<< before updating\n    return 'mine'\n=======\n    return 'template'\n>>>>>>> after updating" in text

    code, out, _ = run(capsys, "check", str(exp))
    assert code == 1 and "Up to date" in out and "Conflict markers left in src/trainer.py" in out

    (exp / "src" / "trainer.py").write_text("import os\n\n\ndef hook():\n    return 'mine'\n# --- anchor\n")
    (exp / "stale.py.rej").write_text("@@ rejected hunk\n")
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 1 and "Rejected patch left: stale.py.rej" in out
    (exp / "stale.py.rej").unlink()
    commit(exp, "resolved")
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 0 and "Up to date" in out


def test_console_script_runs(tiny, tmp_path):
    """The installed `torchstrap` entry point (a fresh process) generates and checks."""
    script = Path(sys.executable).with_name("torchstrap")
    env = {**os.environ, "TORCHSTRAP_TEMPLATE": str(tiny)}
    done = subprocess.run([str(script), "new", str(tmp_path / "exp")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([str(script), "check"], cwd=tmp_path / "exp", capture_output=True, text=True)
    assert done.returncode == 0 and "Up to date" in done.stdout
    done = subprocess.run([str(script), "update", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "is not a git repository" in done.stderr


def test_project_past_the_latest_release_is_not_downgraded(tiny, tmp_path, capsys):
    """Generated from a commit after v1.0.0: update re-applies that commit (answers change), then v1.1.0."""
    edit(tiny, "template/src/trainer.py", "# --- anchor", "# --- anchor (after v1.0.0)")
    commit(tiny, "unreleased fix")
    head = git("rev-parse", "HEAD", cwd=tiny).stdout.strip()
    exp = new_experiment(tmp_path / "exp", {}, template=str(tiny), vcs_ref=head)
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["_commit"] == f"v1.0.0-1-g{head[:7]}"
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 0 and "template v1.0.0 + 1 commit from" in out and "Up to date" in out

    code, out, _ = run(capsys, "update", str(exp), "-d", "use_slurm=false")
    assert code == 0 and "Re-applied template v1.0.0 + 1 commit" in out, out
    assert not (exp / "slurm").exists() and "(after v1.0.0)" in (exp / "src" / "trainer.py").read_text()
    commit(exp, "no slurm")

    edit(tiny, "template/src/trainer.py", "    pass", "    return 3")
    tag(tiny, "v1.1.0", "release")
    code, out, _ = run(capsys, "check", str(exp))
    assert code == 1 and "Behind the template by 1 version(s): v1.1.0." in out
    code, out, _ = run(capsys, "update", str(exp))
    assert code == 0 and "v1.0.0 + 1 commit -> v1.1.0" in out
    assert (exp / "src" / "trainer.py").read_text() == "def hook():\n    return 3\n# --- anchor (after v1.0.0)\n"


def test_migration_needs_trust_then_moves_the_edited_file(tiny, tmp_path, capsys):
    """v2 renames src/trainer.py -> src/engine.py with a `_migrations` command: refused without --trust;
    with it, the researcher's edit follows the file and overlaps are reported, never dropped."""
    exp = new_experiment(tmp_path / "exp", {}, template=str(tiny))
    (exp / "src" / "trainer.py").write_text("def hook():\n    return 'mine'\n# --- anchor\n")
    commit(exp, "mine")
    git("mv", "template/src/trainer.py", "template/src/engine.py", cwd=tiny)
    migration = ('_migrations:\n  - version: v2.0.0\n    command: ["git", "mv", "src/trainer.py", "src/engine.py"]\n'
                 "    when: \"{{ _stage == 'before' }}\"\n")
    (tiny / "copier.yml").write_text(TINY_COPIER + migration)
    tag(tiny, "v2.0.0", "v2: trainer.py is now engine.py")

    code, _, err = run(capsys, "update", str(exp))
    assert code == 2 and "(migrations)" in err and "torchstrap update --trust" in err
    assert git("status", "--porcelain", cwd=exp).stdout == ""
    code, out, _ = run(capsys, "update", str(exp), "--trust")
    assert not (exp / "src" / "trainer.py").exists()
    assert "return 'mine'" in (exp / "src" / "engine.py").read_text()
    assert code in (0, 1) and (code == 0) == ("need your attention" not in out)


def test_answer_change_adds_and_removes_files_but_keeps_edited_ones(tiny, tmp_path, capsys):
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False}, template=str(tiny))
    assert not (exp / "slurm").exists()
    code, out, _ = run(capsys, "update", str(exp), "-d", "use_slurm=true")
    assert code == 0 and "slurm/run.sh" in out and "slurm/submit.py" in out
    assert (exp / "slurm" / "run.sh").read_text() == "sbatch my-experiment\n"
    commit(exp, "slurm on")
    (exp / "slurm" / "run.sh").write_text("#SBATCH --partition=mine\nsbatch my-experiment\n")
    commit(exp, "my partition")

    code, out, _ = run(capsys, "update", str(exp), "-d", "use_slurm=false")
    assert code == 0, out
    assert not (exp / "slurm" / "submit.py").exists()
    assert (exp / "slurm" / "run.sh").read_text() == "#SBATCH --partition=mine\nsbatch my-experiment\n"
    assert "Kept your edited files" in out and "  slurm/run.sh" in out
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["use_slurm"] is False


def test_default_template_is_this_checkout_at_its_committed_head(tmp_path, monkeypatch):
    """What `make demo` uses: no --template, no $TORCHSTRAP_TEMPLATE."""
    monkeypatch.delenv("TORCHSTRAP_TEMPLATE", raising=False)
    describe = lambda: git("describe", "--tags", "--always", cwd=CHECKOUT).stdout.strip()  # noqa: E731
    before = describe()
    exp = new_experiment(tmp_path / "exp", {"project_name": "demo-like"})
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert answers["_src_path"] == str(CHECKOUT)
    assert answers["_commit"] in {before, describe()}  # others may commit meanwhile
    assert (exp / "src" / "demo_like" / "trainer.py").is_file()


def test_no_template_source_is_a_sentence(tmp_path, capsys, monkeypatch):
    """Neither a checkout nor an installed package carrying the template, and no --template or $TORCHSTRAP_TEMPLATE."""
    monkeypatch.delenv("TORCHSTRAP_TEMPLATE", raising=False)
    monkeypatch.setattr(template_source, "CHECKOUT", tmp_path / "site-packages")
    code, _, err = run(capsys, "new", str(tmp_path / "exp"))
    assert code == 2 and "neither a git checkout" in err and "--template" in err
