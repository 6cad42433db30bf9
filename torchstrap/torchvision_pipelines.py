"""CoKe's three ImageNet recipes as seeded FFCV pipelines (torchstrap_runtime.methods.coke.views): the
authors' torchvision transforms, op for op."""

from torchstrap_runtime.methods.coke.views import (coke_imagenet_double_view, coke_imagenet_multi_view,
                                                   coke_imagenet_single_view)

__all__ = ["coke_imagenet_single_view", "coke_imagenet_double_view", "coke_imagenet_multi_view"]
