"""torchstrap_runtime: the machinery that generated torchstrap experiments import."""

# The package version, written only here: pyproject.toml reads it (`dynamic`), `torchstrap --version` prints it,
# and it names the newest release section of CHANGELOG.md (`## v0.1.0`) and the release tag.
__version__ = "0.1.0"

from . import ffcv_import_hook as _ffcv_import_hook

_ffcv_import_hook.install()  # whoever imports FFCV first, its import compiles nothing (see the module)
