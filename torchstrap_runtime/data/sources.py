"""Dataset sources -> train/val .beton files: digits, CIFAR-10/100 archives, image folders, ImageNet.

`prepare(source, path, folder, **options)` writes `folder/train.beton` and `folder/val.beton` (digits keeps its
own names), `classes.json` (the class names, index = label) and, beside each .beton, a JSON record of the
source, options and counts. Files that are already written with the same source and options are kept.
Nothing is downloaded: users fetch archives themselves. Archives are untrusted input: their members are read
in memory (nothing is extracted) and CIFAR's pickles go through a restricted unpickler that admits only the
numpy types the official files use.
"""
from __future__ import annotations

import codecs
import io
import json
import pickle
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..run_folder import write_json_atomic
from .writers import (PathLike, beton_info, digits_split, list_image_folder, write_dataset, write_digits,
                      write_image_files)

SOURCES = ("digits", "cifar10", "cifar100", "image-folder", "imagenet")
WRITE_MODES = ("raw", "jpg", "smart", "proportion")


class SourceError(ValueError):
    """Bad input a user can cause (missing or corrupt file, bad option): one sentence, shown without a traceback."""


# ---------------------------------------------------------------------- CIFAR
CIFAR = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"], "meta": "batches.meta",
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz", "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"], "val": ["test"], "meta": "meta",
    },
}
# The only globals in the official pickles (written by Python 2 with numpy); numpy 2 renamed numpy.core.
# Python 3 writes bytes under pickle protocol 2 as `_codecs.encode(text, "latin1")`.
_reconstruct = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Loads plain containers, numbers, strings and numpy arrays; any other global is refused (no code runs)."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays and bytes are allowed)") from None


def load_pickle(data: bytes, where: str) -> dict:
    """A CIFAR pickle from bytes, through RestrictedUnpickler; keys as str."""
    try:
        loaded = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:
        raise SourceError(f"{where} is not a CIFAR python pickle ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise SourceError(f"{where} is not a CIFAR python pickle (a {type(loaded).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def cifar_members(source: str, path: Path) -> Dict[str, bytes]:
    """The bytes of the pickles CIFAR needs, from its .tar.gz (read in memory) or its extracted folder."""
    spec = CIFAR[source]
    names = spec["train"] + spec["val"] + [spec["meta"]]
    found: Dict[str, bytes] = {}
    if path.is_dir():
        folder = path / spec["folder"] if (path / spec["folder"]).is_dir() else path
        for name in names:
            if (folder / name).is_file():
                found[name] = (folder / name).read_bytes()
        where = str(folder)
    else:
        try:
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    # regular files named <folder>/<name> only: links, devices and other paths are ignored
                    if member.isfile() and member.name in {f"{spec['folder']}/{n}" for n in names}:
                        found[member.name.rsplit("/", 1)[1]] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise SourceError(f"{path} is not a readable {spec['archive']} archive ({error})") from None
        where = str(path)
    missing = [n for n in names if n not in found]
    if missing:
        raise SourceError(f"{where} lacks {', '.join(missing)}: expected the official {spec['archive']} "
                          f"(or its extracted {spec['folder']}/ folder) from {spec['url']}")
    return found


def cifar_split(source: str, members: Mapping[str, bytes], split: str, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and int64 labels of one split."""
    images, labels = [], []
    for name in CIFAR[source][split]:
        batch = load_pickle(members[name], name)
        if "data" not in batch or label_key not in batch:
            raise SourceError(f"CIFAR pickle {name} lacks 'data' or '{label_key}' (keys: {', '.join(batch)})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise SourceError(f"CIFAR pickle {name}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes of 32x32
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
        if len(labels[-1]) != len(data):
            raise SourceError(f"CIFAR pickle {name}: {len(data)} images but {len(labels[-1])} labels")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def cifar_classes(source: str, members: Mapping[str, bytes], labels: str) -> List[str]:
    meta = load_pickle(members[CIFAR[source]["meta"]], CIFAR[source]["meta"])
    key = "label_names" if source == "cifar10" else f"{labels}_label_names"
    if key not in meta:
        raise SourceError(f"CIFAR pickle {CIFAR[source]['meta']} lacks '{key}' (keys: {', '.join(meta)})")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def write_cifar(source: str, path: Path, folder: Path, labels: str = "fine") -> tuple:
    """CIFAR-10/100 (archive or extracted folder) -> raw 32x32 train/val .beton files; `labels` 'fine' or
    'coarse' (CIFAR-100's 20 superclasses). Returns (paths, class names, skipped per split)."""
    if labels not in ("fine", "coarse"):
        raise SourceError(f"--labels must be 'fine' or 'coarse', got {labels!r}")
    if source == "cifar10" and labels != "fine":
        raise SourceError("--labels coarse exists for cifar100 only (CIFAR-10 has one set of labels)")
    members = cifar_members(source, path)
    label_key = "labels" if source == "cifar10" else f"{labels}_labels"
    classes = cifar_classes(source, members, labels)
    paths = {}
    for split in ("train", "val"):
        images, split_labels = cifar_split(source, members, split, label_key)
        if split_labels.min() < 0 or split_labels.max() >= len(classes):
            raise SourceError(f"CIFAR {split} labels must be in [0, {len(classes)}), got {split_labels.min()}.."
                              f"{split_labels.max()}")
        paths[split] = timed(folder / f"{split}.beton", lambda p: write_dataset(p, images, split_labels))
    return paths, classes, {"train": None, "val": None}


# ---------------------------------------------------------------------- image folders and ImageNet
def subset_per_class(files: List[Path], labels: List[int], n: int) -> Tuple[List[Path], List[int]]:
    """The first n files (sorted order) of each class."""
    counts: Dict[int, int] = {}
    kept = []
    for f, label in zip(files, labels):
        if counts.get(label, 0) < n:
            counts[label] = counts.get(label, 0) + 1
            kept.append((f, label))
    return [f for f, _ in kept], [label for _, label in kept]


def listed(folder: Path, what: str) -> Tuple[List[Path], List[int], List[str]]:
    try:
        return list_image_folder(folder)
    except (FileNotFoundError, ValueError) as error:
        raise SourceError(f"{what}: {error}") from None


def folder_splits(path: Path, source: str, val_fraction: float, split_seed: int, subset: int):
    """{split: (files, labels)} and the class names: from train/ and val/, or a seeded stratified split."""
    if (path / "train").is_dir() and (path / "val").is_dir():
        train_files, train_labels, classes = listed(path / "train", source)
        val_files, val_labels, val_classes = listed(path / "val", source)
        if val_classes != classes:
            extra = sorted(set(val_classes) ^ set(classes))
            raise SourceError(f"{path}/train and {path}/val must have the same class folders; they differ in "
                              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        splits = {"train": (train_files, train_labels), "val": (val_files, val_labels)}
    elif source == "imagenet":
        raise SourceError(f"{path} must hold train/ and val/, each with one folder per class (ILSVRC-2012 layout; "
                          f"sort val/ into class folders first, e.g. with the PyTorch ImageNet example's valprep.sh)")
    else:
        files, labels, classes = listed(path, source)
        if not 0.0 < val_fraction < 1.0:
            raise SourceError(f"--val-fraction must be in (0, 1), got {val_fraction}")
        try:
            train, val = digits_split(np.asarray(labels), val_fraction, split_seed)
        except ValueError as error:
            raise SourceError(f"cannot split {path} into train and val with --val-fraction {val_fraction} "
                              f"({error}); give it train/ and val/ subfolders instead") from None
        splits = {s: ([files[i] for i in idx], [labels[i] for i in idx]) for s, idx in (("train", train), ("val", val))}
    if subset:
        splits = {s: subset_per_class(*fl, subset) for s, fl in splits.items()}
    return splits, classes


def write_folder_source(source: str, path: Path, folder: Path, *, val_fraction: float = 0.1, split_seed: int = 0,
                        subset: int = 0, write_mode: str = "smart", max_resolution: Optional[int] = None,
                        jpeg_quality: int = 90, compress_probability: float = 0.5, num_workers: int = 1,
                        chunk_size: int = 100, skip_bad: bool = False):
    """An image folder or ImageNet -> train/val .beton files with FFCV's image-writer settings."""
    if write_mode not in WRITE_MODES:
        raise SourceError(f"--write-mode must be one of {', '.join(WRITE_MODES)}, got {write_mode!r}")
    if not path.is_dir():
        raise SourceError(f"{path} is not a folder (expected one subfolder per class)")
    splits, classes = folder_splits(path, source, val_fraction, split_seed, subset)
    paths, skipped = {}, {}
    for split, (files, labels) in splits.items():
        def write(target, files=files, labels=labels, split=split):
            written, skipped[split] = write_image_files(
                files, labels, target, write_mode=write_mode, max_resolution=max_resolution,
                jpeg_quality=jpeg_quality, compress_probability=compress_probability, num_workers=num_workers,
                chunk_size=chunk_size, skip_bad=skip_bad)
            return written
        try:
            paths[split] = timed(folder / f"{split}.beton", write)
        except ValueError as error:
            raise SourceError(str(error)) from None
    return paths, classes, skipped


# ---------------------------------------------------------------------- the common path
def timed(target: Path, write) -> Path:
    """Run write(target) and print the images/s."""
    start = time.perf_counter()
    written = write(target)
    seconds = time.perf_counter() - start
    count = beton_info(written)[0]
    print(f"{written}: {count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.0f} images/s)", flush=True)
    return written


def record_path(beton: Path) -> Path:
    """The JSON record beside a .beton: train.beton -> train.json."""
    return beton.with_suffix(".json")


def up_to_date(folder: Path, source: str, path: Path, options: Mapping) -> bool:
    """Both .beton files are valid and their records name this source, path and options."""
    for split in ("train", "val"):
        beton = folder / f"{split}.beton"
        try:
            record = json.loads(record_path(beton).read_text())
            if (record["source"], record["path"], record["options"]) != (source, str(path), dict(options)):
                return False
            if beton_info(beton)[0] != record["count"]:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return (folder / "classes.json").is_file()


def missing_path_message(source: str, path: Optional[Path]) -> str:
    """One sentence: PATH is missing, where to get the data by hand and what to pass."""
    what = f"{path} does not exist" if path else f"--source {source} needs --path"
    if source in CIFAR:
        spec = CIFAR[source]
        return (f"{what}: download {spec['archive']} by hand from {spec['url']} and pass "
                f"--path /where/it/is/{spec['archive']} (the archive or its extracted {spec['folder']}/ folder)")
    if source == "imagenet":
        return (f"{what}: download ILSVRC-2012 (train and val images) by hand from "
                f"https://image-net.org/download-images, sort it into train/<wnid>/ and val/<wnid>/ folders and "
                f"pass --path /where/it/is")
    return f"{what}: pass --path a folder with one subfolder of images per class"


def prepare(source: str, path: Optional[PathLike], folder: PathLike, *, labels: str = "fine",
            val_fraction: float = 0.1, split_seed: int = 0, subset: int = 0, write_mode: Optional[str] = None,
            max_resolution: Optional[int] = None, jpeg_quality: int = 90, compress_probability: float = 0.5,
            num_workers: Optional[int] = None, chunk_size: int = 100, skip_bad: bool = False,
            image_size: int = 32) -> Dict[str, Path]:
    """Write `source` (one of SOURCES) read from `path` as train/val .beton files in `folder`.

    digits: scikit-learn's bundled digits at `image_size` (no path). cifar10/cifar100: the official python
    archive or its extracted folder (`labels` 'fine' or 'coarse' for CIFAR-100). image-folder: one subfolder per
    class, with train/ and val/ or split by `val_fraction` and `split_seed`. imagenet: ILSVRC-2012 train/<wnid>/
    and val/<wnid>/; defaults to FFCV's ImageNet settings (write_mode 'proportion', max_resolution 256).
    `subset` keeps the first N images of each class. `num_workers`: writer processes, 0 = every core; default
    every core for imagenet, else 1 (this process). Returns {"train": path, "val": path}; raises SourceError.
    """
    if source not in SOURCES:
        raise SourceError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    folder = Path(folder)
    if source == "digits":
        return write_digits(folder, image_size=image_size)
    if not path or not Path(path).expanduser().exists():
        raise SourceError(missing_path_message(source, Path(path) if path else None))
    path = Path(path).expanduser()
    if subset < 0:
        raise SourceError(f"--subset must be >= 0 (0 = every image), got {subset}")
    if source in CIFAR:
        options = {"labels": labels}
    else:
        if write_mode is None:
            write_mode = "proportion" if source == "imagenet" else "smart"
        if max_resolution is None and source == "imagenet":
            max_resolution = 256
        if max_resolution is not None and max_resolution < 1:
            raise SourceError(f"--max-resolution must be >= 1, got {max_resolution}")
        if not 0 <= jpeg_quality <= 100 or not 0.0 <= compress_probability <= 1.0:
            raise SourceError(f"--jpeg-quality must be in [0, 100] and --compress-probability in [0, 1], got "
                              f"{jpeg_quality} and {compress_probability}")
        options = {"val_fraction": val_fraction, "split_seed": split_seed, "subset": subset, "write_mode": write_mode,
                   "max_resolution": max_resolution, "jpeg_quality": jpeg_quality,
                   "compress_probability": compress_probability, "skip_bad": skip_bad}
    paths = {s: folder / f"{s}.beton" for s in ("train", "val")}
    if up_to_date(folder, source, path, options):
        print(f"{folder}: already written from {path} with these options (delete it to write again)")
        return paths
    if source in CIFAR:
        written, classes, skipped = write_cifar(source, path, folder, labels)
    else:
        if num_workers is None:
            num_workers = 0 if source == "imagenet" else 1
        written, classes, skipped = write_folder_source(source, path, folder, num_workers=num_workers,
                                                        chunk_size=chunk_size, **options)
    write_json(folder / "classes.json", classes)
    for split, beton in written.items():
        record = {"source": source, "path": str(path), "options": options, "split": split,
                  "count": beton_info(beton)[0], "classes": len(classes),
                  "skipped": [str(p) for p in skipped[split] or []],
                  "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(record_path(beton), record)
    return written


def write_json(path: Path, value) -> None:
    """Atomic JSON write (`run_folder.write_json_atomic`)."""
    write_json_atomic(path, value, indent=1)


def read_classes(folder: PathLike) -> List[str]:
    """The class names `prepare` wrote beside the .beton files (index = label)."""
    return json.loads((Path(folder) / "classes.json").read_text())


# ---------------------------------------------------------------------- command line
def parser(default_source: str = "digits", default_path: Optional[str] = None, default_folder: Optional[str] = None):
    import argparse

    p = argparse.ArgumentParser(description="Write a dataset as train/val FFCV .beton files (no download).")
    p.add_argument("--source", default=default_source, choices=SOURCES, help="dataset kind (default: %(default)s)")
    p.add_argument("--path", default=default_path,
                   help="archive or folder to read (cifar: the .tar.gz or its extracted folder)")
    p.add_argument("--folder", default=default_folder, help="where the .beton files go (default: data/<source>)")
    p.add_argument("--labels", default="fine", choices=("fine", "coarse"), help="CIFAR-100 labels")
    p.add_argument("--val-fraction", type=float, default=0.1, help="image-folder without val/: share held out")
    p.add_argument("--split-seed", type=int, default=0, help="seed of that stratified split")
    p.add_argument("--subset", type=int, default=0, help="keep the first N images per class (0 = all)")
    p.add_argument("--write-mode", choices=WRITE_MODES, default=None,
                   help="FFCV image storage (default: proportion for imagenet, smart for image-folder)")
    p.add_argument("--max-resolution", type=int, default=None, help="shrink longer sides above this (imagenet: 256)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--compress-probability", type=float, default=0.5, help="write-mode proportion: share as JPEG")
    p.add_argument("--num-workers", type=int, default=None,
                   help="writer processes, 0 = every core (default: every core for imagenet, else 1)")
    p.add_argument("--chunk-size", type=int, default=100, help="images per worker task")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed) instead of stopping")
    p.add_argument("--image-size", type=int, default=32, help="digits: side of the images")
    return p


def main(argv: Optional[Sequence[str]] = None, **defaults) -> int:
    """`prepare` from the command line; a SourceError becomes one sentence on stderr and exit code 2."""
    import sys

    args = parser(**defaults).parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("source", "path", "folder")}
    folder = args.folder or f"data/{args.source}"
    try:
        paths = prepare(args.source, args.path, folder, **options)
    except SourceError as error:
        print(f"prepare_data: {error}", file=sys.stderr)
        return 2
    print(f"train: {paths['train']}\nval:   {paths['val']}")
    return 0
