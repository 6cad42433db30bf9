#!/usr/bin/env bash
# Idempotent set-up: system libraries for FFCV, .venv, torch, torchstrap with its dev extras.
#   TORCH_SPEC  pip requirement for torch (default torch==2.13.0, CPU build); an installed torch is kept.
#   VENV        virtual environment folder (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
APT_CMD="apt-get install -y libopencv-dev libturbojpeg0-dev libjpeg-dev pkg-config"
CONDA_CMD="conda install -c conda-forge opencv libjpeg-turbo pkg-config"

have_system_libs() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists opencv4 && pkg-config --exists libturbojpeg \
        && pkg-config --exists libjpeg
}
if ! have_system_libs; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing the system libraries of FFCV and torchstrap's kernels (opencv4, libjpeg-turbo) with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $APT_CMD -qq >/dev/null
    else
        echo "setup: FFCV and torchstrap's kernels need the system libraries opencv4, libturbojpeg and libjpeg, which pkg-config cannot find; install them (Debian/Ubuntu: sudo $APT_CMD; conda: $CONDA_CMD), then run 'make setup' again." >&2
        exit 1
    fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.torchstrap-setup"
want="$(cat pyproject.toml setup.py torchstrap_runtime/data/_kernels.cpp scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import torchstrap_runtime.data._kernels, ffcv" 2>/dev/null; then
    echo "setup: up to date ($VENV)"
    exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
    echo "setup: installing $TORCH_SPEC"
    "$VENV/bin/pip" install -q "$TORCH_SPEC"
fi
echo "setup: installing torchstrap and its dev extras (FFCV and torchstrap's kernels compile once, about a minute)"
"$VENV/bin/pip" install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
