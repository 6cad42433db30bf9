"""What a packager and a pip user see: one version, the metadata of the wheel, and the system-library message."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement
from packaging.version import Version

import torchstrap
import torchstrap_runtime
from experiments import subprocess_env
from installs import build_wheel, copy_sources
from torchstrap.generator.template_repo import TEMPLATE_FILES
from torchstrap.generator.template_source import CHECKOUT, parse_version
from torchstrap.generator.template_store import PACKAGED

PACKAGED_IN_WHEEL = PACKAGED.relative_to(CHECKOUT).as_posix()
PYPROJECT = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
EXTRAS = ("tensorboard", "wandb", "mlflow", "pandas", "slurm")
CONDA_HINT = "conda install -c conda-forge opencv libjpeg-turbo"
APT_HINT = "apt-get install -y libopencv-dev libturbojpeg0-dev libjpeg-dev"

# torch APIs and the first release that has them: the floor in pyproject.toml is the newest one the code uses.
TORCH_API_SINCE = {
    r"\bnn\.RMSNorm\b": "2.4",
    r"\badd_safe_globals\b": "2.4",
    r"\bnn\.Buffer\b": "2.5",
    r"\btorch\.accelerator\b": "2.6",
    r"\btorch\.amp\.GradScaler\(": "2.3",
    r"\btorch\.get_default_device\b": "2.3",
    r"\btorch\.compiler\.is_compiling\b": "2.3",
    r"\bsdpa_kernel\b": "2.3",
    r"\btorch\.compile\b": "2.0",
    r"\b_foreach_lerp_\b": "2.0",
    r"\blr_scheduler\.LRScheduler\b": "2.0",
    r"\bscaled_dot_product_attention\b": "2.0",
    r"\bweights_only\b": "1.13",
}


def requirement(name: str, requirements: list[str]) -> Requirement:
    return next(r for r in map(Requirement, requirements) if r.name == name)


def newest_release_heading(changelog: str) -> str:
    """The first `## vX.Y.Z` heading of CHANGELOG.md (sections are newest first, under `## Unreleased`)."""
    return re.findall(r"^## (v\S+)$", changelog, flags=re.M)[0]


def test_one_version_everywhere():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "torchstrap_runtime.__version__"}
    version = torchstrap_runtime.__version__
    assert torchstrap.__version__ == version and str(Version(version)) == version, "a normalized PEP 440 version"
    changelog = (CHECKOUT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", changelog, flags=re.M)
    assert headings[0] == "Unreleased", "CHANGELOG.md starts with `## Unreleased`, then one section per release"
    assert newest_release_heading(changelog) == f"v{version}", "CHANGELOG's newest release is not __version__"
    releases = [parse_version(h) for h in headings[1:]]
    assert None not in releases and releases == sorted(releases, reverse=True), f"release headings: {headings}"


def test_cli_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "torchstrap.generator.cli", "--version"], capture_output=True, text=True,
                         env=subprocess_env(CHECKOUT), cwd=CHECKOUT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"torchstrap {torchstrap_runtime.__version__}", out


def test_license_is_an_spdx_expression():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and all((CHECKOUT / f).is_file() for f in project["license-files"])
    assert not any(c.startswith("License ::") for c in project.get("classifiers", [])), "SPDX replaces these"
    backend = requirement("setuptools", PYPROJECT["build-system"]["requires"])
    assert "77" in backend.specifier, "SPDX `license` and `license-files` need setuptools>=77"
    assert not backend.specifier.contains("76.9") and Version(setuptools.__version__) in backend.specifier


def test_typed_packages_ship_py_typed():
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in ("torchstrap_runtime", "torchstrap"):
        assert (CHECKOUT / package / "py.typed").is_file() and "py.typed" in package_data[package]


def test_extras_by_purpose_and_dev_is_their_union():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {*EXTRAS, "dev"}
    integrations = {r for name in EXTRAS for r in extras[name]}
    dev = set(extras["dev"])
    assert integrations <= dev, f"dev lacks {integrations - dev}"
    assert {Requirement(r).name for r in dev - integrations} >= {"pytest", "pytest-timeout", "ruff"}


def test_torch_floor_is_the_newest_api_the_code_uses():
    sources = [p for folder in ("torchstrap_runtime", "torchstrap", "template")
               for p in (CHECKOUT / folder).rglob("*") if p.suffix in (".py", ".jinja")]
    text = "\n".join(p.read_text() for p in sources)
    used = {api: since for api, since in TORCH_API_SINCE.items() if re.search(api, text)}
    floor = max(map(Version, used.values()))
    assert requirement("torch", PYPROJECT["project"]["dependencies"]).specifier == f">={floor}", (
        f"torch APIs used and their first release: {used}")


def _tool_folder(tmp_path: Path, tools: dict[str, str]) -> Path:
    """A folder to use as the whole PATH: `tools` maps a name to a shell script body (or to a real program)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in tools.items():
        if body.startswith("/"):
            (folder / name).symlink_to(body)
        else:
            (folder / name).write_text(f"#!/bin/sh\n{body}\n")
            (folder / name).chmod(0o755)
    return folder


FAILING_PKG_CONFIG = 'echo "Package $2 was not found in the pkg-config search path" >&2; exit 1'


@pytest.mark.parametrize("pkg_config", [None, FAILING_PKG_CONFIG], ids=["no-pkg-config", "libraries-not-found"])
def test_setup_py_names_the_system_packages(tmp_path, pkg_config):
    tools = _tool_folder(tmp_path, {"pkg-config": pkg_config} if pkg_config else {})
    env = {**subprocess_env(CHECKOUT), "PATH": str(tools)}
    out = subprocess.run([sys.executable, "setup.py", "--version"], cwd=CHECKOUT, env=env, capture_output=True,
                         text=True, timeout=120)
    message = out.stderr.strip()
    assert out.returncode != 0 and "Traceback" not in message and len(message.splitlines()) == 1, out.stderr
    reason = "pkg-config is not installed" if pkg_config is None else "pkg-config cannot find opencv4 and libjpeg"
    for part in (reason, "Debian/Ubuntu: sudo apt-get install libopencv-dev libturbojpeg0-dev", CONDA_HINT):
        assert part in message, message


def test_setup_sh_names_the_system_packages_when_not_root(tmp_path):
    tools = _tool_folder(tmp_path, {"id": "echo 1000", "dirname": shutil.which("dirname")})
    out = subprocess.run([shutil.which("bash"), "scripts/setup.sh"], cwd=CHECKOUT, capture_output=True, text=True,
                         env={**os.environ, "PATH": str(tools)}, timeout=60)
    message = out.stderr.strip()
    assert out.returncode == 1 and len(message.splitlines()) == 1, out
    assert APT_HINT in message and CONDA_HINT in message and "make setup" in message, message


def test_wheel_metadata(tmp_path):
    """Build the wheel from a copy of the source tree (with the native kernels) and read what pip would see."""
    source = copy_sources(tmp_path / "src")
    wheel = build_wheel(source, tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_file,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_file))
    version = torchstrap_runtime.__version__
    assert metadata["Version"] == version and wheel.name.startswith(f"torchstrap-{version}-")
    assert metadata["License-Expression"] == "MIT" and metadata["License"] is None
    assert f"torchstrap-{version}.dist-info/licenses/LICENSE" in names
    assert {"torchstrap_runtime/py.typed", "torchstrap/py.typed"} <= names
    assert any(re.fullmatch(r"torchstrap_runtime/data/_kernels\..*\.so", n) for n in names), "native kernels"
    template = [path.relative_to(source).as_posix() for name in TEMPLATE_FILES
                for path in [source / name, *(source / name).rglob("*")] if path.is_file()]
    assert {f"{PACKAGED_IN_WHEEL}/{name}" for name in template} <= names, "the template travels with the package"
    assert set(metadata.get_all("Provides-Extra")) == {*EXTRAS, "dev"}
    requires = metadata.get_all("Requires-Dist")
    assert "torch>=2.4" in requires and 'mlflow-skinny>=2.10; extra == "mlflow"' in requires
