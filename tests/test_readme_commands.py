"""The commands README.md and docs/*.md show run as written.

Every ```bash block is run, the blocks of one document in order in one shell (a `cd` carries over, as when a
user follows the page), in a scratch folder standing for the torchstrap checkout: `torchstrap` is this
checkout's (`python -m torchstrap.generator.cli`, put on PATH by a `.venv/bin/activate` of the scratch checkout) and
`torchstrap new` generates from this checkout's template. `make demo` and `make test` are left out (the suite
runs them: test_demo.py, and this very suite). Blocks that need a cluster, a download or runs of your own are
fenced ```sh, listings and diagrams ```text: they are illustrations, not run.

README.md's ```python examples run each in a fresh interpreter in the scratch folder when they are
self-contained (they begin unindented); an indented excerpt of a class is compiled only. The `torchstrap runs`
and `torchstrap plot` lines of the sh blocks run on a runs/ folder of real toy runs (two learning rates x two
seeds), as a user with runs of their own would type them.
"""

from __future__ import annotations

import os
import re
import shutil
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments import subprocess_env, template_repo
from torchstrap.generator.template_source import CHECKOUT, ENV_VAR

DOCUMENTS = [CHECKOUT / "README.md", *sorted((CHECKOUT / "docs").glob("*.md"))]
LEFT_OUT = ("make demo", "make test")          # the suite is running them
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)


def fenced_blocks(document: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a Markdown file, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(document.read_text())]


def runnable_lines(block: str) -> list[str]:
    """A bash block's lines, without the commands the suite runs elsewhere (LEFT_OUT)."""
    return [line for line in block.splitlines() if not line.strip().startswith(LEFT_OUT)]


def scratch_checkout(folder: Path) -> Path:
    """folder/torchstrap: a stand-in for the checkout, whose `.venv/bin/activate` puts this checkout's
    `torchstrap` on PATH (generating from a fresh git repository of this checkout's template)."""
    checkout, bin_dir = folder / "torchstrap", folder / "torchstrap" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "torchstrap").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m torchstrap.generator.cli "$@"\n')
    (bin_dir / "torchstrap").chmod(0o755)
    (bin_dir / "activate").write_text(f"export PATH={shlex.quote(str(bin_dir))}:$PATH\n")
    return checkout


def user_env(template: Path) -> dict[str, str]:
    """The user's shell: this checkout importable, no virtual environment active, no make settings inherited."""
    env = subprocess_env(CHECKOUT)
    for name in ("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "PY", "ARGS", "DATA_PATH"):
        env.pop(name, None)
    env[ENV_VAR] = str(template)
    return env


def test_only_bash_blocks_are_meant_to_run():
    """Every fence names what it holds; a command block that is not run says why by its fence (sh)."""
    for document in DOCUMENTS:
        for language, text in fenced_blocks(document):
            assert language in ("bash", "sh", "text", "python", "yaml"), f"{document.name}: ```{language}\n{text}"


@pytest.mark.slow
@pytest.mark.timeout(2700)  # README.md: three experiments generated and trained (supervised, ssl, metric)
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(lang == "bash" for lang, _ in fenced_blocks(d))],
                         ids=lambda d: d.name)
def test_bash_blocks_run_as_written(document, tmp_path):
    checkout = scratch_checkout(tmp_path)
    template = template_repo(tmp_path / "template")
    lines = [line for language, text in fenced_blocks(document) if language == "bash" for line in runnable_lines(text)]
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=checkout, env=user_env(template), capture_output=True,
                          text=True, timeout=2400)
    assert done.returncode == 0, f"{document.name}:\n{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_readme_python_examples_run(tmp_path):
    examples = [text for language, text in fenced_blocks(CHECKOUT / "README.md") if language == "python"]
    assert len(examples) >= 3
    for text in examples:
        if text[:1].isspace():                         # an excerpt of a class: compiled only
            compile(textwrap.dedent(text), "README.md", "exec")
            continue
        done = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=subprocess_env(CHECKOUT),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{text}\n{done.stderr[-3000:]}"


def test_docs_python_examples_compile():
    for document in DOCUMENTS:
        for language, text in fenced_blocks(document):
            if language == "python":
                compile(textwrap.dedent(text), document.name, "exec")


def test_the_runnable_lines_leave_out_only_what_the_suite_runs():
    assert runnable_lines("make demo   # set up\nmake test   # the suite\ncd ../x\n") == ["cd ../x"]
    assert os.path.isfile(CHECKOUT / "tests" / "test_demo.py")


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory) -> Path:
    """A folder holding runs/: two learning rates (0.1 and 0.05) x two seeds of test_runs' toy trainer."""
    from torchstrap_runtime import launcher

    import test_cluster_toy as toy
    from test_runs import toy_config

    folder = tmp_path_factory.mktemp("user")
    for lr in (0.1, 0.05):
        for seed in (0, 1):
            config = toy_config(folder / "runs", f"lr{lr}-s{seed}", lr, seed)
            assert launcher.run_training(config, toy.TRAINER)["finished"]
    return folder


def test_runs_and_plot_examples_work_on_real_runs(seeded_runs, monkeypatch, capsys):
    """The `torchstrap runs` / `torchstrap plot` lines of every sh block, on a runs/ folder of seeded runs."""
    from torchstrap.generator.cli import main

    commands = [shlex.split(line, comments=True) for document in DOCUMENTS
                for language, text in fenced_blocks(document) if language == "sh"
                for line in text.splitlines() if line.startswith(("torchstrap runs", "torchstrap plot"))]
    assert len(commands) >= 8
    monkeypatch.chdir(seeded_runs)
    for argv in commands:
        code = main(argv[1:])
        captured = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {captured.err}"


def fresh_venv(checkout: Path) -> None:
    """checkout/.venv: a new virtual environment that sees this interpreter's installed packages (torch, FFCV, ...,
    through links, so no install is repeated) except torchstrap itself and the experiments installed there, which
    the README's own command (`make setup`) then installs."""
    subprocess.run([sys._base_executable, "-m", "venv", str(checkout / ".venv")], check=True)
    shared = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    links = checkout.parent / "shared-site-packages"
    links.mkdir()
    for entry in shared.iterdir():
        name = entry.name.lower()
        if "torchstrap" in name or "experiment" in name or name.endswith(".pth") or name == "__pycache__":
            continue
        (links / entry.name).symlink_to(entry)
    site = next((checkout / ".venv" / "lib").glob("python*/site-packages"))
    (site / "shared-packages.pth").write_text(f"{links}\n")


def checkout_copy(folder: Path) -> Path:
    """The checkout's files as a user gets them: no virtual environment, no build outputs, caches or runs."""
    anywhere = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "*.beton", ".numba_cache", ".pytest_cache")
    top = {".git", ".venv", "build", "data", "runs", "demo-experiment"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(anywhere(folder, names)) | (top & set(names) if Path(folder) == CHECKOUT else set())

    return Path(shutil.copytree(CHECKOUT, folder / "torchstrap", ignore=ignore, symlinks=True))


@pytest.mark.slow  # installs torchstrap (its C++ kernels compile) and runs every README command: many minutes
@pytest.mark.timeout(5400)
def test_readme_from_a_fresh_venv(tmp_path):
    """README.md followed in a copy of the checkout with a new .venv: `make setup` (what `make demo` and `make test`
    run first) installs torchstrap into it, then every bash block runs with that environment only: no PYTHONPATH,
    numba's cache in the user's cache folder (a new one)."""
    checkout = checkout_copy(tmp_path)
    fresh_venv(checkout)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "PY", "ARGS",
                        "DATA_PATH", "TORCHSTRAP_DEBUG")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), **{ENV_VAR: str(template_repo(tmp_path / "template"))})
    done = subprocess.run(["make", "setup"], cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    venv_python = str(checkout / ".venv" / "bin" / "python")
    where = subprocess.run([venv_python, "-c", "import torchstrap_runtime; print(torchstrap_runtime.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(checkout), where  # the copy's torchstrap, installed by make setup
    lines = [line for language, text in fenced_blocks(CHECKOUT / "README.md") if language == "bash"
             for line in runnable_lines(text)]
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert list((tmp_path / "cache" / "torchstrap" / "numba").rglob("*.nbi")), "kernels cached per installation"
