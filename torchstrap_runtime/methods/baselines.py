"""The SSL baselines' recipes by name: what an ssl-multiview experiment's `ssl.recipe` selects besides CoKe's
(`methods.coke.RECIPES`). Each is its method module's `RECIPE` (see `methods.recipes.BaselineRecipe`)."""

from __future__ import annotations

from . import barlow_twins, byol, dino, mocov3, simclr, vicreg
from .recipes import BaselineRecipe

BASELINES: dict[str, BaselineRecipe] = {m.RECIPE.name: m.RECIPE for m in (simclr, byol, vicreg, barlow_twins, mocov3,
                                                                           dino)}
