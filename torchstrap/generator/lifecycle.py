"""The experiment lifecycle over copier's Python API: generate (`new`), update, check.

Every failure a user can meet is raised as `TemplateError` with a sentence; the CLI prints it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from copier._main import Worker  # the public run_copy/run_update cannot validate answers first
from copier.errors import CopierError, UnsafeTemplateError
from plumbum import ProcessExecutionError

from torchstrap.generator.merge import merge
from torchstrap.generator.template_source import (
    TemplateError,
    TemplateSource,
    checkout_ref,
    commit_version,
    default_ref,
    git,
    newer_versions,
    remote_tags,
    resolve,
    update_ref,
    versions,
)
from torchstrap.generator.template_store import (
    installed_requirement,
    is_store,
    local_store_for,
    packaged_template,
    resolve_source,
    sync_store,
)

ANSWERS_FILE = ".copier-answers.yml"
RECORDED_PYTHON = "python"  # the answer holding the interpreter `new` ran on (the experiment's `make` uses it)
RECORDED_REQUIREMENT = "torchstrap_requirement"  # how pip finds the torchstrap that ran `new`/`update`
CONFLICT_MARKERS = (b"<<<<<<< ", b">>>>>>> ")  # copier writes "<<<<<<< before updating" / ">>>>>>> after updating"


@dataclass
class UpdateReport:
    path: Path
    version_before: str
    version_after: str
    changed: list[str] = field(default_factory=list)  # `git status --porcelain` lines after the update
    conflicts: list[str] = field(default_factory=list)  # files with conflict markers
    rejects: list[str] = field(default_factory=list)  # leftover .rej files
    kept: list[str] = field(default_factory=list)  # edited files the new template (or answers) drops, kept


@dataclass
class CheckReport:
    path: Path
    version: str  # the project's `_commit`
    template: str  # the project's `_src_path`
    newer: list[str]  # template release tags newer than `version`
    latest: str | None  # the template's latest release tag (None: no release yet)
    conflicts: list[str]
    rejects: list[str]

    @property
    def ok(self) -> bool:
        return not (self.newer or self.conflicts or self.rejects)


# ---------------------------------------------------------------------------------------------- helpers


def parse_data(pairs: list[str] | None) -> dict[str, str]:
    """`["task=ssl-multiview", "use_slurm=false"]` -> dict; copier casts the strings to each question's type."""
    data: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TemplateError(f"-d expects key=value, got {pair!r}.")
        data[key.strip()] = value
    return data


_BOOL_WORDS = {"y", "yes", "t", "true", "on", "1", "n", "no", "f", "false", "off", "0"}


def _check_data(data: Mapping[str, Any], questions: Mapping[str, Any]) -> None:
    """Unknown keys and non-boolean words for bool questions (copier itself checks choices/validators).
    Values the template computes (`when: false`, e.g. num_classes from the dataset) are not answers."""
    questions = {k: v for k, v in questions.items() if not (isinstance(v, dict) and v.get("when") is False)}
    unknown = sorted(set(data) - set(questions))
    if unknown:
        raise TemplateError(
            f"Unknown answer key {', '.join(repr(k) for k in unknown)}; "
            f"the template asks: {', '.join(questions)}."
        )
    for key, value in data.items():
        spec = questions[key]
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "bool" and isinstance(value, str) and value.strip().lower() not in _BOOL_WORDS:
            raise TemplateError(f"Invalid answer: {key} must be true or false, got {value!r}.")


def _copier_message(err: BaseException, url: str, ref: str | None) -> TemplateError:
    """Turn a copier/git exception into a sentence."""
    if isinstance(err, ProcessExecutionError):
        last = (err.stderr or "").strip().splitlines()[-1:] or [str(err)]
        at = f" at {ref!r}" if ref else ""
        return TemplateError(f"git failed on the template {url}{at}: {last[0]}")
    if isinstance(err, UnsafeTemplateError):
        return TemplateError(
            f"The template {url} needs unsafe copier features to reach {ref} "
            f"({str(err).splitlines()[0].split(': ')[-1].rstrip('.')}); "
            "read its copier.yml (`_migrations`), then run `torchstrap update --trust` if you trust it."
        )
    text = str(err).strip() or type(err).__name__
    if "version from last update not detected" in text:
        return TemplateError(
            f"The experiment was generated from an untagged template commit, so copier cannot update it; "
            f"tag a release in {url} (e.g. `git tag v0.1.0`) and generate from it, or re-generate."
        )
    if "version from template not detected" in text:
        return TemplateError(f"The template {url} has no release tag (PEP 440, e.g. v0.1.0); tag one first.")
    if text.startswith("Unknown revision"):
        return TemplateError(f"The template {url} has no version/ref {ref!r} (see `git -C <template> tag`).")
    return TemplateError(f"Invalid answer: {text}" if isinstance(err, ValueError) else text)


def _git_root(path: Path) -> Path:
    if not path.is_dir():
        raise TemplateError(f"{path} is not a directory.")
    result = git("rev-parse", "--show-toplevel", cwd=path, check=False)
    if result.returncode != 0:
        raise TemplateError(
            f"{path} is not a git repository; torchstrap tracks experiments in git "
            "(`torchstrap new` makes one): run this inside the experiment folder or give its path."
        )
    return Path(result.stdout.strip())


def project_root(path: Path) -> Path:
    """The experiment folder: `path` itself, or the top of its git repository when run from a subfolder."""
    path = path.expanduser().absolute()
    top = _git_root(path)
    if not (path / ANSWERS_FILE).is_file() and (top / ANSWERS_FILE).is_file():
        return top
    return path


def read_answers(path: Path) -> dict[str, Any]:
    """The project's `.copier-answers.yml`, with a sentence when missing or broken."""
    file = path / ANSWERS_FILE
    if not file.is_file():
        raise TemplateError(
            f"{path} has no {ANSWERS_FILE}: it was not generated by `torchstrap new` (or the file was deleted)."
        )
    try:
        answers = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise TemplateError(f"{file} is not valid YAML: {err}") from None
    for key in ("_src_path", "_commit"):
        if key not in answers:
            raise TemplateError(f"{file} has no {key}; the project cannot be updated from its template.")
    return answers


def dirty_files(path: Path) -> list[str]:
    """Uncommitted changes, untracked files included (an update could overwrite them)."""
    out = git("status", "--porcelain", "--untracked-files=all", "--", ".", cwd=path).stdout
    return [line for line in out.splitlines() if line.strip()]


def _project_files(path: Path, ignored: bool = False) -> list[str]:
    args = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    if ignored:
        args = ["ls-files", "-z", "--others", "--ignored", "--exclude-standard"]
    return sorted({f for f in git(*args, "--", ".", cwd=path).stdout.split("\0") if f})  # unmerged: 3 entries


def find_conflicts(path: Path) -> list[str]:
    """Files (relative to `path`) that still hold merge conflict markers."""
    found = []
    for name in _project_files(path):
        file = path / name
        if not file.is_file():
            continue  # tracked but deleted
        data = file.read_bytes()
        if b"\0" in data[:8000]:
            continue  # binary
        if any(line.startswith(CONFLICT_MARKERS) for line in data.splitlines()):
            found.append(name)
    return sorted(found)


def find_rejects(path: Path) -> list[str]:
    """Leftover `*.rej` files from a patch that did not apply, ignored ones included."""
    names = set(_project_files(path)) | set(_project_files(path, ignored=True))
    return sorted(n for n in names if n.endswith(".rej") and (path / n).is_file())


def _commit_all(path: Path, message: str, author: str | None) -> None:
    env_needed = not git("config", "user.email", cwd=path, check=False).stdout.strip()
    identity = ["-c", f"user.name={author or 'torchstrap'}", "-c", "user.email=torchstrap@localhost"]
    git("add", "-A", cwd=path)
    git(*(identity if env_needed else []), "commit", "-q", "--no-verify", "-m", message, cwd=path)


# ---------------------------------------------------------------------------------------------- new


def new_experiment(
    path: str | os.PathLike,
    data: Mapping[str, Any] | None = None,
    defaults: bool = True,
    template: str | None = None,
    vcs_ref: str | None = None,
    quiet: bool = True,
) -> Path:
    """Generate an experiment at `path` from a git template, `git init` it and commit; return its path.

    `template`: git path/URL (default: $TORCHSTRAP_TEMPLATE, else this torchstrap checkout).
    `vcs_ref`: tag/branch/sha; default: the checkout's committed HEAD, or the latest release tag of an
    explicit template. Use "HEAD" to include uncommitted template changes of a local source.
    The interpreter running this is recorded as the `python` answer (unless given) for the experiment's Makefile.
    """
    dst = Path(path).expanduser().absolute()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise TemplateError(f"{dst} already exists and is not empty; choose a new folder.")
    existing = next(p for p in dst.parents if p.exists())
    if not existing.is_dir():
        raise TemplateError(f"Cannot create {dst}: {existing} is a file, not a folder.")
    source: TemplateSource = resolve_source(template)
    if vcs_ref is None and source.origin == "checkout":
        vcs_ref = checkout_ref()
        pending = git("status", "--porcelain", "--", "template", "copier.yml", cwd=source.url).stdout.strip()
        if pending:
            print(f"torchstrap: uncommitted template changes in {source.url} are not used "
                  "(commit them, or pass --vcs-ref HEAD to try them).", file=sys.stderr)
    elif vcs_ref is None:
        vcs_ref = source.ref or default_ref(source.url)
    data = dict(data or {})
    try:
        with Worker(
            src_path=source.url, dst_path=dst, data=data, defaults=defaults, vcs_ref=vcs_ref, quiet=quiet
        ) as worker:
            _check_data(data, worker.template.questions_data)
            if RECORDED_PYTHON in worker.template.questions_data and RECORDED_PYTHON not in data:
                worker.data[RECORDED_PYTHON] = sys.executable  # the experiment's Makefile runs this Python
            if RECORDED_REQUIREMENT in worker.template.questions_data and RECORDED_REQUIREMENT not in data:
                worker.data[RECORDED_REQUIREMENT] = installed_requirement()
            worker.run_copy()
    except (CopierError, ValueError, ProcessExecutionError) as err:
        raise _copier_message(err, source.url, vcs_ref) from None
    answers = read_answers(dst)
    git("init", "-q", cwd=dst)
    _commit_all(dst, f"Generate from torchstrap template {answers['_commit']}", answers.get("author_name"))
    return dst


# ---------------------------------------------------------------------------------------------- update


def update_experiment(
    path: str | os.PathLike = ".",
    data: Mapping[str, Any] | None = None,
    vcs_ref: str | None = None,
    trust: bool = False,
) -> UpdateReport:
    """copier update (overwrite, inline conflicts) of a clean, committed experiment; never commits."""
    root = project_root(Path(path))
    answers = read_answers(root)
    dirty = dirty_files(root)
    if dirty:
        listing = "\n  ".join(dirty[:20]) + ("\n  ..." if len(dirty) > 20 else "")
        raise TemplateError(
            f"{root} has uncommitted changes; commit (or discard) them first so the update can be reviewed "
            f"and undone:\n  {listing}"
        )
    url = str(answers["_src_path"])
    installed = _sync_if_store(url)  # the installed package's template joins the store: the update's target
    remote_tags(url)  # raises "not reachable" early, with a sentence
    vcs_ref = vcs_ref or installed or update_ref(str(answers["_commit"]), url)
    data = dict(data or {})
    try:
        with Worker(
            dst_path=root,
            data=data,
            defaults=True,
            overwrite=True,
            conflict="inline",
            vcs_ref=vcs_ref,
            quiet=True,
            unsafe=trust,
        ) as worker:
            _check_data(data, worker.template.questions_data)
            if RECORDED_PYTHON in worker.template.questions_data and RECORDED_PYTHON not in {**answers, **data}:
                worker.data[RECORDED_PYTHON] = sys.executable  # an experiment generated before the answer existed
            if RECORDED_REQUIREMENT in worker.template.questions_data and RECORDED_REQUIREMENT not in data:
                worker.data[RECORDED_REQUIREMENT] = installed_requirement()  # the torchstrap updating it
            worker.run_update()
    except (CopierError, ValueError, ProcessExecutionError) as err:
        raise _copier_message(err, url, vcs_ref) from None
    after = read_answers(root)
    try:
        kept = _after_update(root, answers, after)
    except (CopierError, ValueError, ProcessExecutionError) as err:
        raise _copier_message(err, url, str(answers["_commit"])) from None
    return UpdateReport(
        path=root,
        version_before=str(answers["_commit"]),
        version_after=str(after["_commit"]),
        changed=dirty_files(root),
        conflicts=find_conflicts(root),
        rejects=find_rejects(root),
        kept=kept,
    )


def _sync_if_store(url: str) -> str | None:
    """When `url` is the user's template store and this package carries a template, add it to the store;
    its ref (None otherwise)."""
    packaged = packaged_template()
    if packaged is None or not is_store(url):
        return None
    return sync_store(packaged)[1]


def _render(answers: Mapping[str, Any], dst: Path) -> Path:
    """Render the template version and answers recorded in `answers` into `dst` (no git, no checks)."""
    data = {k: v for k, v in answers.items() if not str(k).startswith("_")}
    with Worker(src_path=str(answers["_src_path"]), dst_path=dst, data=data, defaults=True,
                vcs_ref=str(answers["_commit"]), quiet=True) as worker:
        worker.run_copy()
    return dst


def _committed(root: Path, name: str) -> bytes | None:
    """The researcher's last committed content of a file, None when it is not in HEAD."""
    done = subprocess.run(["git", "show", f"HEAD:./{name}"], cwd=root, capture_output=True)
    return done.stdout if done.returncode == 0 else None


def _after_update(root: Path, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Repair what copier's update does badly; return the edited files it deleted and that were kept.

    1. copier removes every file the new template (or a changed answer) no longer generates, edited or
       not: a file whose committed content differs from the old version's rendering is restored.
    2. copier's merge calls adjacent-line edits conflicts: unmerged files are merged again line by line
       (torchstrap.generator.merge); the ones left without conflict are marked resolved.
    """
    out = git("diff", "--name-only", "-z", "--diff-filter=D", "--", ".", cwd=root).stdout
    deleted = [name for name in out.split("\0") if name]
    out = git("diff", "--name-only", "-z", "--diff-filter=U", "--", ".", cwd=root).stdout
    unmerged = [name for name in out.split("\0") if name]
    if not deleted and not unmerged:
        return []
    kept = []
    with tempfile.TemporaryDirectory(prefix="torchstrap_update_") as tmp:
        old = _render(before, Path(tmp) / "old")
        for name in deleted:
            if _committed(root, name) != ((old / name).read_bytes() if (old / name).is_file() else None):
                git("checkout", "HEAD", "--", name, cwd=root)
                kept.append(name)
        new = _render(after, Path(tmp) / "new") if unmerged else None
        for name in unmerged:
            ours = _committed(root, name)
            if ours is None or not (old / name).is_file() or not (new / name).is_file():
                continue  # added on both sides: copier's two-sided conflict stands
            try:
                merged, left = merge(ours, (old / name).read_bytes(), (new / name).read_bytes())
            except ValueError:
                continue  # not mergeable as text: copier's result stands
            (root / name).write_bytes(merged)
            if left == 0:
                git("reset", "-q", "--", name, cwd=root)  # no longer unmerged
    return kept


# ---------------------------------------------------------------------------------------------- check


def check_experiment(path: str | os.PathLike = ".", template: str | None = None) -> CheckReport:
    """Is the experiment behind its template, and are conflict markers or .rej files left?

    `template` compares with another clone of the template (e.g. its URL in CI, where the recorded
    `_src_path` may be a folder on the researcher's machine).
    """
    root = project_root(Path(path))
    answers = read_answers(root)
    version = str(answers["_commit"])
    url = resolve(template).url if template else local_store_for(str(answers["_src_path"]))
    _sync_if_store(url)
    return CheckReport(
        path=root,
        version=version,
        template=url,
        newer=newer_versions(version, url),
        latest=releases[-1][1] if (releases := versions(url)) else None,
        conflicts=find_conflicts(root),
        rejects=find_rejects(root),
    )


def describe_version(commit: str) -> str:
    """`v1.2.0-3-gabc` -> 'v1.2.0 + 3 commits'; `v1.2.0` -> 'v1.2.0'."""
    base, count = commit_version(commit)
    if base is None:
        return f"untagged commit {commit}"
    match = re.match(r"^(.+)-\d+-g[0-9a-f]+$", commit)
    tag = match[1] if match else commit
    return f"{tag} + {count} commit{'s' * (count != 1)}" if count else tag
