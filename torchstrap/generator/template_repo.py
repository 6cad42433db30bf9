"""Build a versioned template repository from this checkout (for tests, benchmarks and release rehearsals).

    repo = build_template_repo(tmp / "tpl")        # copier.yml + template/ + CHANGELOG.md, committed
    tag(repo, "v1.0.0")
    edit(repo, "template/...", old, new); tag(repo, "v2.0.0", "v2 message")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torchstrap.generator.template_source import CHECKOUT, git

TEMPLATE_FILES = ("copier.yml", "template", "CHANGELOG.md")
_IDENTITY = ("-c", "user.name=torchstrap tests", "-c", "user.email=tests@torchstrap.invalid")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.beton", ".numba_cache")


def build_template_repo(dst: Path, checkout: Path = CHECKOUT, files: tuple[str, ...] = TEMPLATE_FILES) -> Path:
    """Copy the template part of `checkout` into a fresh git repository at `dst` and commit it (no tag)."""
    dst.mkdir(parents=True, exist_ok=False)
    for name in files:
        src = checkout / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=_IGNORE)
        elif src.is_file():
            shutil.copy2(src, dst / name)
    git("init", "-q", "-b", "main", cwd=dst)
    commit(dst, "template as in the checkout")
    return dst


def commit(repo: Path, message: str) -> None:
    """Commit everything in `repo` (no-op commit allowed)."""
    git("add", "-A", cwd=repo)
    git(*_IDENTITY, "commit", "-q", "--allow-empty", "-m", message, cwd=repo)


def tag(repo: Path, name: str, message: str | None = None) -> None:
    """Commit pending changes (if `message`) and put a lightweight tag on HEAD."""
    if message is not None:
        commit(repo, message)
    git("tag", name, cwd=repo)


def edit(repo: Path, relpath: str, old: str, new: str, count: int = 1) -> None:
    """Replace `old` by `new` in one template file; fails loudly when `old` is not there."""
    file = repo / relpath
    text = file.read_text()
    if old not in text:
        raise ValueError(f"{relpath}: text to replace not found: {old!r}")
    file.write_text(text.replace(old, new, count))
