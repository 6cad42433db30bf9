"""Builds torchstrap's native kernels (torchstrap_runtime/data/_kernels.cpp) against the system's libjpeg-turbo
and OpenCV, the libraries FFCV compiles against; everything else is in pyproject.toml."""
import shlex
import subprocess

from setuptools import Extension, setup

INSTALL_HINT = "sudo apt-get install libopencv-dev libjpeg-dev libturbojpeg0-dev pkg-config  (or: make setup)"


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"torchstrap: pkg-config could not find {args[-2:]} ({err}); install them: {INSTALL_HINT}")
    return shlex.split(out)


cflags = pkg_config("--cflags", "opencv4", "libjpeg")
library_dirs = [flag[2:] for flag in pkg_config("--libs-only-L", "opencv4", "libjpeg")]

kernels = Extension(
    "torchstrap_runtime.data._kernels",
    sources=["torchstrap_runtime/data/_kernels.cpp"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", *cflags],
    library_dirs=library_dirs,
    libraries=["jpeg", "opencv_imgproc", "opencv_core"],
)

setup(ext_modules=[kernels])
