"""Write PNG grids showing what the loader and augmentation seeds do (see torchstrap's docs/data.md).

    python scripts/show_augmentations.py                       # colourised digits, into augmentations/
    python scripts/show_augmentations.py --beton data/my.beton --out pictures/

seeds.png: first mini-batch of 3 for loader seed None/0/1 x augmentation seed None/0/1, two loaders each;
ops.png: each of the nine seeded ops under loader seed None and 0; views.png: three views of a dataset
that stores only image and label, views 1 and 2 sharing their grayscale seed.
"""
import argparse
from pathlib import Path

from torchstrap_runtime.data.pictures import save_augmentation_grids, write_colour_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beton", type=Path, default=None,
                        help="a .beton with an 'image' field (default: colourised digits written to data/)")
    parser.add_argument("--out", type=Path, default=Path("augmentations"), help="folder for the PNG files")
    args = parser.parse_args()
    beton = args.beton or write_colour_digits(Path("data") / "colour_digits.beton")
    for path in save_augmentation_grids(beton, args.out):
        print(path)


if __name__ == "__main__":
    main()
