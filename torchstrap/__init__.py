"""torchstrap's public names, as the product specifies them; each is the runtime's one implementation.

    import torchstrap
    torchstrap.Trainer                                   # torchstrap_runtime.trainer.Trainer
    from torchstrap.config import param, Section, Param   # torchstrap_runtime.config
    from torchstrap.data.ffcv.transforms.image import RandomResizedCrop, RandomColorJitter, ...
    from torchstrap.criterion import coke_single_view, coke_multi_view
    from torchstrap.torchvision_pipelines import coke_imagenet_multi_view
"""

from __future__ import annotations

from typing import Any

from torchstrap_runtime import __version__


def __getattr__(name: str) -> Any:
    if name == "Trainer":  # imported when asked for: torch is slow to import, the CLI does not need it
        from torchstrap_runtime.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'torchstrap' has no attribute {name!r}")


__all__ = ["Trainer", "__version__"]
