"""Builds torchstrap's native kernels (torchstrap_runtime/data/_kernels.cpp) against the system's libjpeg-turbo
and OpenCV, the libraries FFCV compiles against; everything else is in pyproject.toml."""
import shlex
import shutil
import subprocess

from setuptools import Extension, setup

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


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    setup(ext_modules=[kernels_extension()])
