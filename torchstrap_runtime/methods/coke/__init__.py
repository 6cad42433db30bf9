"""CoKe (Qian et al., "Unsupervised Visual Representation Learning by Online Constrained K-Means", CVPR 2022;
code idstcv/CoKe) in one place:

- `criterion`: `CoKeSingleView`, `CoKeDoubleView`, `CoKeMultiView` (registered with `build_criterion` as
  coke_single_view, coke_double_view, coke_multi_view);
- `heads`: `CoKeProjector`, `CoKePredictor`, `CoKeHeads` (backbone -> projections, predictions);
- `views`: the seeded FFCV pipelines of the three recipes, `coke_imagenet_{single,double,multi}_view`
  (imported on its own: it needs FFCV);
- `RECIPES`: what the template's `ssl.recipe` selects: the criterion, its authors' parameters and the views.

The authors train a ResNet-50 with LARS (lr 1.6 at batch 1024, momentum 0.9, weight decay 1e-6) under a
cosine schedule after an 11-epoch warm-up, for 1001 epochs (801 multi-crop); their first epoch runs with
lr 0, a pure clustering epoch (`ssl.first_epoch_lr_zero` in the template).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .criterion import CoKeDoubleView, CoKeMultiView, CoKeSingleView
from .heads import CoKeHeads, CoKePredictor, CoKeProjector


@dataclass(frozen=True)
class Recipe:
    """One of the authors' recipes: `criterion` (a build_criterion name), its `params` (the authors' ImageNet
    values) and `views` (the name of its pipeline builder in `methods.coke.views`)."""

    criterion: str
    views: str
    params: dict = field(default_factory=dict)


_SHARED = {"embedding_size": 128, "num_clusters": [3000, 4000, 5000], "dual_lr": 20.0, "min_size_ratio": 0.4}
# The authors' run_*.sh settings (run_single_view.sh sets beta 1; main_single_view.py defaults to 0.5).
RECIPES: dict[str, Recipe] = {
    "coke_single": Recipe("coke_single_view", "coke_imagenet_single_view",
                          {**_SHARED, "temperature": 0.1, "beta": 1.0, "stage": 801, "soft_label_size": 5,
                           "soft_label_temperature": 0.5}),
    "coke_double": Recipe("coke_double_view", "coke_imagenet_double_view",
                          {**_SHARED, "temperature": 0.05, "alpha": 0.2}),
    "coke_multi": Recipe("coke_multi_view", "coke_imagenet_multi_view",
                         {**_SHARED, "temperature": 0.05, "alpha": 0.2, "beta": 0.5, "num_small_crops": 6}),
}

__all__ = ["CoKeSingleView", "CoKeDoubleView", "CoKeMultiView", "CoKeHeads", "CoKeProjector", "CoKePredictor",
           "Recipe", "RECIPES"]
