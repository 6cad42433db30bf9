"""Installs as a pip user makes them: this checkout's sources copied and built into a wheel, and fresh virtual
environments that see the test environment's packages (torch, FFCV, ...) but not its torchstrap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from torchstrap.generator.template_source import CHECKOUT

PIP_QUIET = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_PROGRESS_BAR": "off"}
NOT_SHARED = ("torchstrap", "__editable__", "_torchstrap", "demo_experiment")  # the checkout's own installs


def copy_sources(dst: Path) -> Path:
    """The checkout's files that git tracks or would track (no build outputs), copied into `dst`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (CHECKOUT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, dst / name)
    return dst


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` of the source folder into `out` (the test environment's setuptools); the wheel's path."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(out)], check=True, capture_output=True, timeout=600, env={**os.environ, **PIP_QUIET})
    print(f"wheel built in {time.perf_counter() - start:.1f} s")
    (wheel,) = out.glob("torchstrap-*.whl")
    return wheel


def shared_packages(folder: Path) -> Path:
    """A folder of links to the test environment's installed packages, torchstrap and editable installs left
    out (a `.pth` line of a fresh venv adds it to the path, so torch and FFCV are not installed again)."""
    if folder.is_dir():
        return folder
    folder.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.suffix != ".pth" and not entry.name.lower().startswith(NOT_SHARED):
            (folder / entry.name).symlink_to(entry)
    return folder


def fresh_venv(path: Path, shared: Path) -> Path:
    """A new virtual environment at `path` (from the base interpreter) that also sees `shared`; its python.
    Its pip and setuptools are the shared ones (the venv module's own setuptools would be older)."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True, timeout=300)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test_shared_packages.pth").write_text(f"{shared}\n")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ for a command of a fresh venv: no PYTHONPATH (no checkout on the path), no active venv."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "TORCHSTRAP_TEMPLATE", "TORCHSTRAP_DEBUG")}
    return {**env, **PIP_QUIET, **extra}
