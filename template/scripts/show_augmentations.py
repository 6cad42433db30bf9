"""Write PNG grids showing what the loader and augmentation seeds do (see torchstrap's docs/data.md).

    python scripts/show_augmentations.py                       # colourised digits, into augmentations/
    python scripts/show_augmentations.py --beton data/my.beton --out pictures/

seeds.png: first mini-batch of 3 for loader seed None/0/1 x augmentation seed None/0/1, two loaders each;
ops.png: each of the ten seeded ops under loader seed None and 0; views.png: three views of a dataset
that stores only image and label, views 1 and 2 sharing their grayscale seed;
coke_multicrop.png: when the config's ssl.recipe is coke_multi, CoKe's 2 large views and small crops
(seeded from ssl.seed).
"""
import argparse
import importlib
import sys
from pathlib import Path

import yaml

from torchstrap_runtime.config import config_as_dict
from torchstrap_runtime.data.pictures import save_augmentation_grids, save_coke_multicrop_grid, write_colour_digits


def ssl_section(config_file: Path) -> dict | None:
    """The resolved `ssl` section: the experiment's (its package under src/ loads configs/default.yaml, then
    `config_file`), or `config_file`'s alone outside an experiment."""
    packages = sorted(path.parent.name for path in Path("src").glob("*/config.py"))
    if packages:
        sys.path.insert(0, "src")
        importlib.import_module(f"{packages[0]}.config").load(["-C", str(config_file)] if config_file.is_file() else [])
        return config_as_dict().get("ssl")
    return (yaml.safe_load(config_file.read_text()) or {}).get("ssl") if config_file.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beton", type=Path, default=None,
                        help="a .beton with an 'image' field (default: colourised digits written to data/)")
    parser.add_argument("--out", type=Path, default=Path("augmentations"), help="folder for the PNG files")
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"),
                        help="the experiment's config (its ssl.recipe coke_multi adds coke_multicrop.png)")
    args = parser.parse_args()
    beton = args.beton or write_colour_digits(Path("data") / "colour_digits.beton")
    for path in save_augmentation_grids(beton, args.out):
        print(path)
    ssl = ssl_section(args.config)
    if ssl and ssl.get("recipe") == "coke_multi":
        seed = ssl.get("seed")
        print(save_coke_multicrop_grid(beton, args.out / "coke_multicrop.png", seed=0 if seed is None else seed))


if __name__ == "__main__":
    main()
