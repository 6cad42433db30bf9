"""Where the experiment template comes from, and which versions it has.

A template source is a git repository (local path or URL) with `copier.yml` at its root. Versions are
the repository's PEP 440 tags (`v1.2.0`); a generated project records the one it came from in
`.copier-answers.yml` (`_commit`, a `git describe` string such as `v1.2.0` or `v1.2.0-3-gabc1234`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from copier._vcs import get_repo
from packaging.version import InvalidVersion, Version

from torchstrap_runtime.errors import UserError

ENV_VAR = "TORCHSTRAP_TEMPLATE"
CHECKOUT = Path(__file__).resolve().parents[2]  # the torchstrap checkout this module runs from
_DESCRIBE = re.compile(r"^(?P<tag>.+)-(?P<count>\d+)-g(?P<sha>[0-9a-f]+)$")


class TemplateError(UserError):
    """A problem the user can fix; the message is a full sentence."""


@dataclass(frozen=True)
class TemplateSource:
    url: str  # what copier is given (and what the answers file records as `_src_path`)
    origin: str  # how it was chosen: "--template", "$TORCHSTRAP_TEMPLATE", "checkout" or "package"
    ref: str | None = None  # "package": the store's ref of the installed package's template


def git(*args: str, cwd: Path | str | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run git (`env`: extra variables), capturing text output; never prompts for credentials."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=env, text=True, capture_output=True, check=check)


def is_checkout(path: Path | None = None) -> bool:
    """True when `path` (default: this checkout) is the root of a git repository holding a copier template."""
    path = path or CHECKOUT
    return (path / ".git").exists() and (path / "copier.yml").is_file()


def resolve(template: str | None = None) -> TemplateSource:
    """Pick the template: `--template`, else $TORCHSTRAP_TEMPLATE, else the torchstrap checkout
    (torchstrap.generator.template_store.resolve_source adds the template an installed package carries)."""
    if template:
        return TemplateSource(_normalize(template, "--template"), "--template")
    if os.environ.get(ENV_VAR):
        return TemplateSource(_normalize(os.environ[ENV_VAR], f"${ENV_VAR}"), f"${ENV_VAR}")
    if is_checkout(CHECKOUT):
        return TemplateSource(str(CHECKOUT), "checkout")
    raise TemplateError(
        f"No template source: torchstrap is neither a git checkout ({CHECKOUT}) nor an installed package "
        f"that carries its template; give one with --template URL_OR_PATH or the {ENV_VAR} environment variable."
    )


def _normalize(src: str, origin: str) -> str:
    """Turn a user-given source into copier's form; local paths must be git repository roots."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / ".git").exists():
            raise TemplateError(
                f"The template source {src} (from {origin}) is not the root of a git repository; "
                "torchstrap needs a git template so that `torchstrap update` can work later."
            )
        if not (path / "copier.yml").is_file() and not (path / "copier.yaml").is_file():
            raise TemplateError(f"The template source {src} (from {origin}) has no copier.yml at its root.")
        return str(path.resolve())
    repo = get_repo(src)
    if repo is None:
        raise TemplateError(
            f"The template source {src} (from {origin}) is not reachable: no such directory, and not a git URL."
        )
    return str(repo)


def git_url(url: str) -> str:
    """What git understands for a copier source (`gh:org/repo` -> `https://github.com/org/repo.git`)."""
    return str(get_repo(url) or url)


def remote_tags(url: str) -> dict[str, str]:
    """Map tag name -> commit sha of every tag in the template repository (`git ls-remote`)."""
    result = git("ls-remote", "--tags", git_url(url), check=False)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["git ls-remote failed"]
        raise TemplateError(f"The template {url} is not reachable: {detail[0]}")
    tags: dict[str, str] = {}
    for line in result.stdout.splitlines():
        sha, ref = line.split("\t")
        name = ref.removeprefix("refs/tags/")
        if name.endswith("^{}"):  # peeled annotated tag: the commit it points at
            tags[name[:-3]] = sha
        else:
            tags.setdefault(name, sha)
    return tags


def parse_version(tag: str) -> Version | None:
    """PEP 440 version of a tag (`v1.2.0` -> 1.2.0), or None when the tag is not a version."""
    try:
        return Version(tag)
    except InvalidVersion:
        return None


def versions(url: str, prereleases: bool = False) -> list[tuple[Version, str]]:
    """Sorted (version, tag) pairs of the template's release tags."""
    pairs = [(v, t) for t in remote_tags(url) if (v := parse_version(t)) is not None]
    return sorted(p for p in pairs if prereleases or not p[0].is_prerelease)


def commit_version(commit: str) -> tuple[Version | None, int]:
    """Split a `git describe` string into (base tag version, commits after it); (None, 0) if untagged."""
    match = _DESCRIBE.match(commit)
    if match:
        return parse_version(match["tag"]), int(match["count"])
    return parse_version(commit), 0


def newer_versions(commit: str, url: str) -> list[str]:
    """Release tags of the template that are newer than the project's recorded `_commit`."""
    base, _ = commit_version(commit)
    return [tag for version, tag in versions(url) if base is None or version > base]


def default_ref(url: str) -> str:
    """The ref to use when none is given: the latest release tag, else the template's committed HEAD.

    Never copier's implicit "HEAD" of a local template, which would include uncommitted changes and
    record a commit that exists nowhere (the next update could not find it).
    """
    releases = versions(url)
    if releases:
        return releases[-1][1]
    result = git("ls-remote", git_url(url), "HEAD", check=False)
    sha = result.stdout.split()[:1]
    if result.returncode != 0 or not sha:
        raise TemplateError(f"The template {url} is not reachable or has no commit.")
    return sha[0]


def update_ref(commit: str, url: str) -> str:
    """Default target of `torchstrap update`: the latest release, unless the project is already past it.

    A project generated from a commit after the latest release (`v1.2.0-3-gabc`) stays on its commit
    (re-applied, so changed answers still take effect) instead of being "downgraded" to the release.
    """
    base, count = commit_version(commit)
    releases = versions(url)
    if releases and base is not None and (base > releases[-1][0] or (base == releases[-1][0] and count > 0)):
        return commit
    return default_ref(url)


def checkout_ref(path: Path | None = None) -> str:
    """The committed HEAD of a checkout as a full sha (dirty changes are never used for generation)."""
    return git("rev-parse", "HEAD", cwd=path or CHECKOUT).stdout.strip()
