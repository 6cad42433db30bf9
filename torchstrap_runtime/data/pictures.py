"""PNG grids that show what the seeds do (behind `scripts/show_augmentations.py` of generated experiments).

    save_augmentation_grids("data/train.beton", "augmentations/")  # -> [seeds.png, ops.png, views.png]

- seeds.png: the first mini-batch of 3 for loader seed None/0/1 x augmentation seed None/0/1, each cell
  drawn twice from two loaders built alike (rows "run 1", "run 2"): a fixed seed repeats, None does not.
- ops.png: each of the ten ops (p=1 where it has a p, so its effect shows), batch of 3 under loader
  seed None and 0, augmentation seed 0.
- views.png: three views of each sample from a dataset storing only image and label
  (`custom_field_mapper`); views 1 and 2 share their grayscale seed, view 3 has its own.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .color_jitter import RandomColorJitter
from .decoders import SimpleRGBImageDecoder
from .erasing import RandomErasing
from .gaussian_blur import RandomGaussianBlur
from .grayscale import RandomGrayscale
from .flip import RandomHorizontalFlip, RandomVerticalFlip
from .invert import RandomInvert
from .loader import Loader, OrderOption
from .random_resized_crop import RandomResizedCrop
from .solarization import RandomSolarization
from .translation import RandomTranslation
from .writers import beton_info, digits_arrays, write_dataset

PathLike = Union[str, Path]
SEEDS = (None, 0, 1)


def image_size(beton_path: PathLike) -> int:
    """Side of the (square) images the pictures are drawn at: the stored size, at most 64."""
    from ffcv.reader import Reader

    metadata = Reader(str(beton_path)).metadata["f0"]
    return int(min(64, metadata["height"].min(), metadata["width"].min()))


def first_batch(beton_path: PathLike, views: Dict[str, list], loader_seed: Optional[int],
                batch_size: int = 3) -> Dict[str, np.ndarray]:
    """The first batch of a fresh loader whose outputs are `views` of the stored 'image' (copied out)."""
    pipelines = {"image": None, "label": None, **views}
    loader = Loader(beton_path, batch_size=batch_size, num_workers=1, order=OrderOption.RANDOM, seed=loader_seed,
                    pipelines=pipelines,
                    custom_field_mapper={name: "image" for name in views})
    iterator = iter(loader)
    batch = next(iterator)
    iterator.close()
    return {name: np.array(x) for name, x in zip(views, batch)}


def standard_ops(size: int, seed: Optional[int]) -> list:
    """A typical SSL-style pipeline, every op seeded with `seed`."""
    return [RandomResizedCrop((size, size), scale=(0.25, 1.0), seed=seed), RandomHorizontalFlip(seed=seed),
            RandomColorJitter(p=0.8, seed=seed), RandomGrayscale(p=0.2, seed=seed)]


def one_op(name: str, size: int, seed: Optional[int]) -> list:
    decoder = SimpleRGBImageDecoder()
    ops = {
        "RandomResizedCrop": [RandomResizedCrop((size, size), seed=seed)],
        "RandomColorJitter": [decoder, RandomColorJitter(p=1.0, seed=seed)],
        "RandomErasing": [decoder, RandomErasing(p=1.0, value=(255, 0, 0), seed=seed)],
        "RandomTranslation": [decoder, RandomTranslation(padding=max(1, size // 6), fill=(128, 128, 128),
                                                         seed=seed)],
        "RandomSolarization": [decoder, RandomSolarization(p=1.0, seed=seed)],
        "RandomGrayscale": [decoder, RandomGrayscale(p=1.0, seed=seed)],
        "RandomHorizontalFlip": [decoder, RandomHorizontalFlip(p=1.0, seed=seed)],
        "RandomVerticalFlip": [decoder, RandomVerticalFlip(p=1.0, seed=seed)],
        "RandomInvert": [decoder, RandomInvert(p=1.0, seed=seed)],
        "RandomGaussianBlur": [decoder, RandomGaussianBlur(kernel_size=max(3, size // 8 * 2 + 1), sigma=(0.5, 2.0),
                                                           p=1.0, seed=seed)],
    }
    return ops[name]


OP_NAMES = ["RandomResizedCrop", "RandomColorJitter", "RandomErasing", "RandomTranslation", "RandomSolarization",
            "RandomGrayscale", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomInvert", "RandomGaussianBlur"]


def strip(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Images side by side on a white background."""
    h, w = images[0].shape[:2]
    out = np.full((h, len(images) * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        out[:, i * (w + gap):i * (w + gap) + w] = image
    return out


def save_figure(cells: List[List[np.ndarray]], row_labels: List[str], col_labels: List[str], title: str,
                path: Path) -> Path:
    """A table of image strips with labels, saved as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(cells), len(cells[0])
    zoom, dpi = 2.0, 72  # screen pixels per image pixel
    cell_w = max(c.shape[1] for row in cells for c in row) * zoom / dpi * 1.08
    cell_h = max(c.shape[0] for row in cells for c in row) * zoom / dpi * 1.3
    left, top, bottom = 1.5, 0.75, 0.1
    fig_w, fig_h = left + cols * cell_w + 0.1, top + rows * cell_h + bottom
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(fig_w, fig_h))
    fig.subplots_adjust(left=left / fig_w, right=1 - 0.1 / fig_w, top=1 - top / fig_h, bottom=bottom / fig_h,
                        wspace=0.08, hspace=0.3)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(cells[r][c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9, y=1 - 0.15 / fig_h, va="top")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def seeds_grid(beton_path: PathLike, out_dir: Path, size: int) -> Path:
    cells, rows = [], []
    for loader_seed in SEEDS:
        for run in (1, 2):  # two loaders built alike; one loader draws every augmentation seed's view
            batch = first_batch(beton_path, {f"aug{s}": standard_ops(size, s) for s in SEEDS}, loader_seed)
            rows.append(f"loader seed {loader_seed}\nrun {run}")
            cells.append([strip(batch[f"aug{s}"]) for s in SEEDS])
    return save_figure(cells, rows, [f"augmentation seed {s}" for s in SEEDS],
                       "first mini-batch of two loaders built alike (crop, flip, jitter, grayscale)",
                       out_dir / "seeds.png")


def ops_grid(beton_path: PathLike, out_dir: Path, size: int) -> Path:
    batches = [first_batch(beton_path, {name: one_op(name, size, 0) for name in OP_NAMES}, loader_seed)
               for loader_seed in (None, 0)]
    cells = [[strip(batch[name]) for batch in batches] for name in OP_NAMES]
    return save_figure(cells, OP_NAMES, ["loader seed None", "loader seed 0"],
                       "each op (p=1), augmentation seed 0", out_dir / "ops.png")


def views_grid(beton_path: PathLike, out_dir: Path, size: int, samples: int = 6) -> Path:
    def view(crop_seed: int, gray_seed: int) -> list:
        return [RandomResizedCrop((size, size), scale=(0.3, 1.0), seed=crop_seed),
                RandomGrayscale(p=0.5, seed=gray_seed)]

    stored = [RandomResizedCrop((size, size), scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)]  # whole image
    batch = first_batch(beton_path, {"stored": stored, "view1": view(1, 0), "view2": view(2, 0), "view3": view(3, 3)},
                        loader_seed=0, batch_size=samples)
    cells = [[batch[name][i] for name in ("stored", "view1", "view2", "view3")] for i in range(samples)]
    return save_figure(cells, [f"sample {i}" for i in range(samples)],
                       ["stored", "view 1\ngray seed 0", "view 2\ngray seed 0", "view 3\ngray seed 3"],
                       "three views of a dataset with only image and label", out_dir / "views.png")


def save_augmentation_grids(beton_path: PathLike, out_dir: PathLike) -> List[Path]:
    """Write seeds.png, ops.png and views.png for the 'image' field of `beton_path` into `out_dir`."""
    n, fields = beton_info(beton_path)
    if "image" not in fields:
        raise ValueError(f"{beton_path} has no 'image' field (fields: {fields})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = image_size(beton_path)
    return [seeds_grid(beton_path, out, size), ops_grid(beton_path, out, size), views_grid(beton_path, out, size)]


def write_colour_digits(path: PathLike, n: int = 300, seed: int = 0) -> Path:
    """Digits painted with a random ink and paper colour each (grayscale and jitter are visible on them)."""
    images, labels = digits_arrays(32)
    ink = images[:n, :, :, :1] / 255.0
    fg, bg = np.random.default_rng(seed).integers(0, 256, (2, n, 1, 1, 3))
    coloured = np.round(ink * fg + (1 - ink) * bg).astype(np.uint8)
    return write_dataset(path, coloured, labels[:n])


def save_coke_multicrop_grid(beton_path: PathLike, out_path: PathLike, seed: int = 0, samples: int = 4,
                             large: int = 64, small: int = 28) -> Path:
    """PNG of CoKe's multi-crop recipe (coke_imagenet_multi_view, base seed `seed`): per sample, the stored
    image, 2 large views and 6 small crops, drawn at `large`/`small` px (224/96 scaled down), before
    normalisation."""
    from ..methods.coke.views import coke_imagenet_multi_view

    pipelines, _ = coke_imagenet_multi_view(seed=seed, image_size=large, small_size=small)
    views = {name: ops[:-4] for name, ops in pipelines.items() if name != "label"}  # drop normalise/to-tensor
    views["stored"] = [RandomResizedCrop((large, large), scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)]
    batch = first_batch(beton_path, {f"v_{k}": v for k, v in views.items()}, loader_seed=0, batch_size=samples)
    names = ["stored", "image", "view2", *[f"small{i}" for i in range(1, 7)]]
    cells = [[batch[f"v_{n}"][i] for n in names] for i in range(samples)]
    return save_figure(cells, [f"sample {i}" for i in range(samples)],
                       ["stored", "large 1", "large 2\n(solarize 0.2)", *[f"small {i}" for i in range(1, 7)]],
                       f"CoKe multi-crop views (coke_imagenet_multi_view, seed {seed}; {large}/{small} px)",
                       Path(out_path))
