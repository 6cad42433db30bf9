"""The template an installed torchstrap carries, and the store that gives copier its versions.

A wheel holds the template of its own version (copier.yml, template/, CHANGELOG.md) in `PACKAGED`. Copier
generates and updates from git tags, so `sync_store` commits that template into the store, a git repository
in the user's data folder (`$XDG_DATA_HOME/torchstrap/template`), and tags it `v<version>`. Every torchstrap
version that runs `new` or `update` on the machine adds its own tag there, so an experiment generated with
one version is updated with the next: copier reads the old version's tag and the new one's from the store.
The experiment records the store's path in `.copier-answers.yml` (`_src_path`).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from torchstrap.generator.template_source import CHECKOUT, ENV_VAR, TemplateSource, git, is_checkout, resolve
from torchstrap_runtime import __version__

PACKAGED = Path(__file__).resolve().with_name("packaged_template")  # filled by setup.py's build_py in a wheel
DISTRIBUTION = "torchstrap"
_IDENTITY = {"GIT_AUTHOR_NAME": "torchstrap", "GIT_AUTHOR_EMAIL": "torchstrap@localhost",
             "GIT_COMMITTER_NAME": "torchstrap", "GIT_COMMITTER_EMAIL": "torchstrap@localhost"}
_NOT_TEMPLATE = (":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc")  # what installing .py adds


def packaged_template(folder: Path = PACKAGED) -> Path | None:
    """The template folder this installed package carries (None in a checkout, which is its own template)."""
    return folder if (folder / "copier.yml").is_file() else None


def resolve_source(template: str | None = None) -> TemplateSource:
    """`template_source.resolve`, falling back to the installed package's template (synced into the store)."""
    packaged = packaged_template()
    if template or os.environ.get(ENV_VAR) or is_checkout() or packaged is None:
        return resolve(template)
    store, ref = sync_store(packaged)
    return TemplateSource(str(store), "package", ref)


def store_path() -> Path:
    """The user's template store: $XDG_DATA_HOME/torchstrap/template (default ~/.local/share/...)."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "torchstrap" / "template"


def is_store(url: str) -> bool:
    """True when `url` (an experiment's `_src_path`) is the template store of this user."""
    return Path(url).expanduser().absolute() == store_path().absolute()


def local_store_for(url: str) -> str:
    """The recorded template source, or this user's store when the source is a store of another machine or user
    that is not here (an experiment's CI runs `torchstrap check` on a fresh runner)."""
    path = Path(url)
    if packaged_template() is not None and not path.exists() and path.parts[-2:] == store_path().parts[-2:]:
        return str(store_path())
    return url


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time changes the store (two `torchstrap new` at once would race on git's index)."""
    with open(folder / "store.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tree_of(store: Path, folder: Path) -> str:
    """The git tree id of `folder`'s files, written into the store's objects (the store's index is untouched)."""
    with tempfile.TemporaryDirectory(prefix="torchstrap_index_") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(folder),
               "GIT_DIR": str(store / ".git")}
        git("add", "-A", "-f", "--", ".", *_NOT_TEMPLATE, cwd=folder, env=env)
        return git("write-tree", cwd=folder, env=env).stdout.strip()


def sync_store(template: Path, version: str = __version__, store: Path | None = None) -> tuple[Path, str]:
    """Make the store hold `template` as this version; return (store, the git ref of that template).

    The ref is the tag `v<version>`; when the tag already names other files (a rebuilt package of the same
    version), the template is a commit after it and the ref is that commit.
    """
    store = store or store_path()
    store.mkdir(parents=True, exist_ok=True)
    with _locked(store.parent):
        if not (store / ".git").is_dir():
            git("init", "-q", "-b", "main", cwd=store)
        tree = _tree_of(store, template)
        tag = f"v{version}"
        tagged = git("rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{tree}}", cwd=store, check=False).stdout
        if tagged.strip() == tree:
            return store, tag
        for line in git("log", "--all", "--format=%H %T", cwd=store, check=False).stdout.splitlines():
            commit, commit_tree = line.split()
            if commit_tree == tree:
                return store, commit
        head = git("rev-parse", "-q", "--verify", "HEAD", cwd=store, check=False).stdout.strip()
        parent = ["-p", head] if head else []
        commit = git("commit-tree", tree, *parent, "-m", f"torchstrap {version} template", cwd=store,
                     env=_IDENTITY).stdout.strip()
        git("update-ref", "refs/heads/main", commit, cwd=store)
        git("reset", "-q", "--hard", "main", cwd=store)  # the store's files are its HEAD: nothing uncommitted
        if tagged:
            return store, commit
        git("tag", tag, commit, cwd=store)
        return store, tag


def installed_requirement(distribution: str = DISTRIBUTION) -> str:
    """The requirement pip resolves to the torchstrap running now: see `requirement_from_direct_url`; a checkout
    (run from its folder, or installed editable) names its folder."""
    if packaged_template() is None:
        return f"{distribution} @ {CHECKOUT.as_uri()}"
    dist = metadata.distribution(distribution)
    return requirement_from_direct_url(distribution, dist.version, dist.read_text("direct_url.json"))


def requirement_from_direct_url(distribution: str, version: str, direct_url: str | None) -> str:
    """The wheel file, folder or VCS URL (at the revision asked for, else the commit) an install came from
    (PEP 610 direct_url.json), else `name==version`: the package index it was installed from serves it."""
    if not direct_url:
        return f"{distribution}=={version}"
    url = json.loads(direct_url)
    if "vcs_info" in url:
        vcs = url["vcs_info"]
        return f"{distribution} @ {vcs['vcs']}+{url['url']}@{vcs.get('requested_revision') or vcs['commit_id']}"
    return f"{distribution} @ {url['url']}"
