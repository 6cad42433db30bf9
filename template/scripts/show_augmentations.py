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
from pathlib import Path

import yaml

from torchstrap_runtime.data.pictures import save_augmentation_grids, save_coke_multicrop_grid, write_colour_digits


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
    ssl = (yaml.safe_load(args.config.read_text()) or {}).get("ssl") if args.config.is_file() else None
    if ssl and ssl.get("recipe") == "coke_multi":
        seed = ssl.get("seed")
        print(save_coke_multicrop_grid(beton, args.out / "coke_multicrop.png", seed=0 if seed is None else seed))


if __name__ == "__main__":
    main()
