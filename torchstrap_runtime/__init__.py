"""torchstrap_runtime: the machinery that generated torchstrap experiments import."""

__version__ = "0.1.0"
