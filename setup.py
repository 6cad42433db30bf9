"""Builds torchstrap's native kernels (torchstrap_runtime/data/_kernels.cpp) against the system's libjpeg-turbo
and OpenCV, the libraries FFCV compiles against; everything else is in pyproject.toml."""
import shlex
import shutil
import subprocess

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

TEMPLATE_FILES = ("copier.yml", "template", "CHANGELOG.md")  # torchstrap.generator.template_repo.TEMPLATE_FILES
PACKAGED_TEMPLATE = Path("torchstrap", "generator", "packaged_template")  # template_store.PACKAGED in a wheel
SYSTEM_LIBRARIES = ("opencv4", "libjpeg")  # pkg-config names of what _kernels.cpp compiles and links against
INSTALL_HINT = ("Debian/Ubuntu: sudo apt-get install libopencv-dev libturbojpeg0-dev libjpeg-dev pkg-config; "
                "conda: conda install -c conda-forge opencv libjpeg-turbo pkg-config")


def missing_system_libraries() -> str | None:
    """What stops the kernels' build, in words (no pkg-config, or the libraries it cannot find); None if nothing."""
    if shutil.which("pkg-config") is None:
        return "pkg-config is not installed"
    missing = [name for name in SYSTEM_LIBRARIES
               if subprocess.run(["pkg-config", "--exists", name], capture_output=True).returncode != 0]
    return f"pkg-config cannot find {' and '.join(missing)}" if missing else None


def pkg_config(*args: str) -> list[str]:
    return shlex.split(subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout)


def kernels_extension() -> Extension:
    """The `_kernels` extension, or SystemExit with one sentence naming the system packages to install."""
    problem = missing_system_libraries()
    if problem:
        raise SystemExit(f"torchstrap: cannot build its image kernels because {problem} (the opencv4 and "
                         f"libjpeg-turbo system libraries, which FFCV needs too); install them ({INSTALL_HINT}), "
                         f"then install torchstrap again.")
    return Extension(
        "torchstrap_runtime.data._kernels",
        sources=["torchstrap_runtime/data/_kernels.cpp"],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17", *pkg_config("--cflags", *SYSTEM_LIBRARIES)],
        library_dirs=[flag[2:] for flag in pkg_config("--libs-only-L", *SYSTEM_LIBRARIES)],
        libraries=["jpeg", "opencv_imgproc", "opencv_core"],
    )


class BuildWithTemplate(build_py):
    """build_py that also puts the experiment template into the package, so `torchstrap new` works from a wheel."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install runs from the checkout, which is its own template
        for name in TEMPLATE_FILES:
            target = str(Path(self.build_lib, PACKAGED_TEMPLATE, name))
            if Path(name).is_dir():
                self.copy_tree(name, target)
            else:
                self.mkpath(str(Path(target).parent))
                self.copy_file(name, target)


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    setup(ext_modules=[kernels_extension()], cmdclass={"build_py": BuildWithTemplate})
