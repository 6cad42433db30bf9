"""A finer 3-way merge for the files copier leaves in conflict after an update.

git's merge (and so copier's) reports a conflict whenever both sides change the same *or adjacent*
lines. In an experiment most such conflicts are line-aligned: the researcher changed `lr: 0.05` and the
template changed `momentum: 0.95` on the next line, or the template reworded a docstring right above
the body line the researcher replaced. When a conflict block has the same number of lines on the three
sides and every line was changed by at most one side, the result is unambiguous: take each line from the
side that changed it. Anything else stays a conflict, with copier's markers.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

OURS, BASE, THEIRS = "before updating", "last update", "after updating"  # copier's labels
START, MIDDLE, SEP, END = (b"<<<<<<< " + OURS.encode(), b"||||||| " + BASE.encode(), b"=======",
                           b">>>>>>> " + THEIRS.encode())


def _resolve(ours: list[bytes], base: list[bytes], theirs: list[bytes]) -> list[bytes] | None:
    """Line-by-line resolution of one conflict block, or None when it is a real conflict."""
    if not len(ours) == len(base) == len(theirs):
        return None
    merged = []
    for o, b, t in zip(ours, base, theirs):
        if o == t or t == b:
            merged.append(o)
        elif o == b:
            merged.append(t)
        else:
            return None  # both sides changed this very line
    return merged


def merge(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, int]:
    """3-way merge of file contents: (merged bytes, conflicts left, marked as copier marks them).

    Raises ValueError when git cannot merge them (binary files).
    """
    with tempfile.TemporaryDirectory(prefix="torchstrap_merge_") as tmp:
        paths = [Path(tmp, name) for name in ("ours", "base", "theirs")]
        for path, data in zip(paths, (ours, base, theirs)):
            path.write_bytes(data)
        done = subprocess.run(["git", "merge-file", "-p", "--diff3", "-L", OURS, "-L", BASE, "-L", THEIRS,
                               *map(str, paths)], capture_output=True)
    if done.returncode < 0 or done.returncode > 127:  # e.g. binary files
        raise ValueError(f"git merge-file failed: {done.stderr.decode(errors='replace').strip()}")
    out: list[bytes] = []
    left = 0
    block: dict[str, list[bytes]] = {}
    part = None
    for line in done.stdout.splitlines(keepends=True):
        bare = line.rstrip(b"\r\n")
        if part is None and bare == START:
            block, part = {"ours": [], "base": [], "theirs": []}, "ours"
        elif part == "ours" and bare == MIDDLE:
            part = "base"
        elif part == "base" and bare == SEP:
            part = "theirs"
        elif part == "theirs" and bare == END:
            resolved = _resolve(block["ours"], block["base"], block["theirs"])
            if resolved is None:
                left += 1
                out += [START + b"\n", *block["ours"], SEP + b"\n", *block["theirs"], END + b"\n"]
            else:
                out += resolved
            part = None
        elif part is not None:
            block[part].append(line)
        else:
            out.append(line)
    if part is not None:  # unterminated block: keep git's output untouched
        return done.stdout, max(left, 1)
    return b"".join(out), left
