"""Write FFCV `.beton` datasets from numpy arrays, image folders and scikit-learn's digits; validate them.

Files are written to a temporary name next to the target and renamed at the end, so an interrupted write
never leaves a half-written `.beton` behind (and concurrent writers of the same file do not collide).
"""
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField
from ffcv.fields.base import Field

from ..errors import BadFileError, MissingFileError
from ..run_folder import atomic_write

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
MAX_FIELD_NAME = 16  # bytes, FFCV's limit


# ---------------------------------------------------------------------- validation
def check_beton(path: PathLike, custom_fields: Optional[Mapping[str, type]] = None) -> Path:
    """Return `path` if it is a readable FFCV .beton; raise MissingFileError / BadFileError naming it otherwise.
    `custom_fields` ({field name: Field class}) reads a file with fields of the caller's own types."""
    from ffcv.reader import Reader
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"FFCV dataset {path} does not exist")
    if not path.is_file():
        raise BadFileError(f"FFCV dataset {path} is not a file")
    size = path.stat().st_size
    if size < HeaderType.itemsize:
        raise BadFileError(f"{path} is not a valid FFCV .beton file: only {size} bytes (empty or truncated)")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if header["version"] != CURRENT_VERSION:
        raise BadFileError(f"{path} is not a valid FFCV .beton file: format version {header['version']}, "
                         f"expected {CURRENT_VERSION} (corrupt, or not a .beton)")
    table_ptr = int(header["alloc_table_ptr"])
    if table_ptr == 0 or table_ptr > size or (size - table_ptr) % ALLOC_TABLE_TYPE.itemsize:
        raise BadFileError(f"{path} is not a valid FFCV .beton file: bad allocation table "
                         f"(truncated or unfinished write)")
    try:
        reader = Reader(str(path), custom_fields or {})
    except Exception as error:
        raise BadFileError(f"{path} is not a valid FFCV .beton file: {error}") from error
    table = reader.alloc_table
    if len(reader.metadata) != reader.num_samples or np.any(table["ptr"] + table["size"] > size):
        raise BadFileError(f"{path} is not a valid FFCV .beton file: metadata or data region truncated")
    return path


def beton_info(path: PathLike) -> Tuple[int, List[str]]:
    """(number of samples, field names) of a valid .beton."""
    from ffcv.reader import Reader

    reader = Reader(str(check_beton(path)))
    return int(reader.num_samples), list(reader.field_names)


def check_fits_model(loader: object, image_size: Optional[int], num_classes: Optional[int]) -> None:
    """BadFileError naming the file when what a torchstrap/FFCV Loader reads does not fit the model: images a
    pipeline decodes at their stored size (`SimpleRGBImageDecoder`) that are not `image_size` px square, or
    stored labels (an int field 'label') outside [0, `num_classes`). Other iterables are not checked."""
    from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder, SimpleRGBImageDecoder

    reader, specs = getattr(loader, "reader", None), getattr(loader, "pipeline_specs", None)
    if reader is None or specs is None:
        return
    fname = getattr(loader, "fname", "the dataset")
    indices = np.asarray(getattr(loader, "indices", np.arange(reader.num_samples)), dtype=np.int64)
    columns = {name: reader.metadata[f"f{position}"][indices] for position, name in enumerate(reader.handlers)}
    stored_size = {name for name, spec in specs.items() if isinstance(spec.source, str)  # not resized crops
                   and isinstance(spec.decoder, SimpleRGBImageDecoder)
                   and not isinstance(spec.decoder, ResizedCropRGBImageDecoder)}
    for name in sorted({specs[n].source for n in stored_size} & set(columns)):
        if image_size is None or not isinstance(reader.handlers[name], RGBImageField) or not len(indices):
            continue
        sizes = {(int(h), int(w)) for h, w in zip(columns[name]["height"], columns[name]["width"])}
        if sizes != {(image_size, image_size)}:
            shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
            raise BadFileError(f"{fname} stores {shown} px images (field {name!r}), which the pipeline uses at "
                               f"their stored size, but data.image_size is {image_size}: write the dataset at "
                               f"{image_size} px or set data.image_size to its size")
    label = columns.get("label")
    if num_classes is not None and label is not None and isinstance(reader.handlers["label"], IntField) \
            and len(label) and (label.min() < 0 or label.max() >= num_classes):
        raise BadFileError(f"{fname} stores labels from {label.min()} to {label.max()} (field 'label') but "
                           f"model.num_classes is {num_classes} (labels 0 to {num_classes - 1}): set "
                           f"model.num_classes to at least {label.max() + 1}, or check the dataset")


# ---------------------------------------------------------------------- writing
class ArrayDataset:
    """Indexable view of aligned per-sample arrays, as FFCV's writer wants it."""

    def __init__(self, columns: Sequence[np.ndarray], kinds: Sequence[str]):
        self.columns, self.kinds = columns, kinds

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> tuple:
        out = []
        for column, kind in zip(self.columns, self.kinds):
            value = column[i]
            out.append(int(value) if kind == "int" else float(value) if kind == "float" else value)
        return tuple(out)


def field_for(name: str, values: np.ndarray, n: int, write_mode: str, jpeg_quality: int) -> Tuple[Field, np.ndarray, str]:
    """FFCV field, the column to write and its kind for one named array of n samples."""
    if len(name.encode()) > MAX_FIELD_NAME:
        raise ValueError(f"write_dataset: field name {name!r} is longer than {MAX_FIELD_NAME} bytes")
    values = np.asarray(values)
    if len(values) != n:
        raise ValueError(f"write_dataset: field {name!r} has {len(values)} samples, images have {n}")
    if values.dtype == np.uint8 and values.ndim in (3, 4) and (values.ndim == 3 or values.shape[3] in (1, 3)):
        return RGBImageField(write_mode=write_mode, jpeg_quality=jpeg_quality), to_rgb(values, name), "image"
    if values.ndim == 1 and np.issubdtype(values.dtype, np.integer):
        return IntField(), values.astype(np.int64), "int"
    if values.ndim == 1 and np.issubdtype(values.dtype, np.floating):
        return FloatField(), values.astype(np.float64), "float"
    if values.ndim >= 2:
        return NDArrayField(values.dtype, values.shape[1:]), values, "array"
    raise ValueError(f"write_dataset: cannot store field {name!r} of dtype {values.dtype} and shape {values.shape}")


def to_rgb(images: np.ndarray, name: str = "images") -> np.ndarray:
    """uint8 (N,H,W) or (N,H,W,1) or (N,H,W,3) -> contiguous uint8 (N,H,W,3)."""
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"{name} must have shape (N,H,W) or (N,H,W,3), got {images.shape}")
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    return np.ascontiguousarray(images)


def write_samples(writer, dataset, description: str) -> None:
    """Run FFCV's writer on `dataset` in this process (errors propagate; FFCV's worker processes hang on them)."""
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import handle_sample
    from tqdm import tqdm

    writer.num_samples = len(dataset)
    writer.prepare()
    allocator = MemoryAllocator(writer.fname, writer.data_region_start, writer.page_size)
    metadata = np.frombuffer(writer.metadata_sm.buf, dtype=writer.metadata_type)
    try:
        with allocator:
            for i in tqdm(range(len(dataset)), desc=description, unit="img"):
                handle_sample(dataset[i], i, writer.metadata_type.names, metadata, allocator, writer.fields)
        del metadata  # release the shared buffer before FFCV closes it
        writer.finalize([allocator.allocations])
    finally:
        metadata = None  # also on an interruption: a live view would make close() fail and hide the error
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()


def write_fields(path: PathLike, fields: Dict[str, Field], dataset, num_workers: int, chunk_size: int = 100) -> Path:
    """Write `dataset` to `path` through `run_folder.atomic_write` (a temporary file, checked, then renamed).

    num_workers=1 writes in this process; more (0 = every core) use FFCV's worker processes (faster JPEG
    encoding), each taking `chunk_size` samples at a time.
    """
    from ffcv.writer import DatasetWriter

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write dataset to {path}: it is a folder")
    workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    with atomic_write(path) as tmp:
        writer = DatasetWriter(str(tmp), fields, num_workers=max(1, min(workers, len(dataset))))
        if writer.num_workers == 1:
            write_samples(writer, dataset, f"writing {path.name}")
        else:
            writer.from_indexed_dataset(dataset, chunksize=chunk_size)
        check_beton(tmp)
    return path


def write_dataset(path: PathLike, images: np.ndarray, labels: np.ndarray,
                  extra_fields: Optional[Mapping[str, np.ndarray]] = None, num_workers: int = 1,
                  write_mode: str = "raw", jpeg_quality: int = 90) -> Path:
    """Write images (uint8 (N,H,W,3) or (N,H,W)), int labels and optional extra fields to a .beton.

    Fields are stored in this order: 'image' (RGBImageField), 'label' (IntField), then `extra_fields`:
    uint8 image-shaped arrays become RGB image fields, 1-D ints IntField, 1-D floats FloatField,
    other arrays NDArrayField. `write_mode` is FFCV's: 'raw' (exact pixels) or 'jpg'/'smart'.
    num_workers=1 writes in this process, more use FFCV's worker processes. Shows a progress bar;
    returns the path.
    """
    images = to_rgb(np.asarray(images), "write_dataset: images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"write_dataset: labels must be a 1-D int array, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise ValueError("write_dataset: no images to write")
    if write_mode not in ("raw", "jpg", "smart"):
        raise ValueError(f"write_dataset: write_mode must be 'raw', 'jpg' or 'smart', got {write_mode!r}")
    named = {"image": images, "label": labels, **dict(extra_fields or {})}
    fields, columns, kinds = {}, [], []
    for name, values in named.items():
        field, column, kind = field_for(name, values, len(images), write_mode, jpeg_quality)
        fields[name] = field
        columns.append(column)
        kinds.append(kind)
    return write_fields(path, fields, ArrayDataset(columns, kinds), num_workers)


# ---------------------------------------------------------------------- image folders
class FolderDataset:
    """(image, label) from files; an unreadable file is recorded in `error_dir` (workers cannot raise)."""

    def __init__(self, files: List[Path], labels: List[int], error_dir: str):
        self.files, self.labels, self.error_dir = files, labels, error_dir

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                array = np.asarray(image.convert("RGB"))
        except Exception as error:  # reported by write_image_folder once the writer is done
            with open(os.path.join(self.error_dir, f"{i}.txt"), "w") as out:
                out.write(f"{self.files[i]}: {type(error).__name__}: {error}")
            array = np.zeros((1, 1, 3), dtype=np.uint8)
        return array, self.labels[i]


def list_image_folder(src_folder: PathLike) -> Tuple[List[Path], List[int], List[str]]:
    """Image files, their labels and the class names (sorted subfolder names) of a folder."""
    src = Path(src_folder)
    if not src.exists():
        raise FileNotFoundError(f"image folder {src} does not exist")
    if not src.is_dir():
        raise ValueError(f"image folder {src} is not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {src} has no class subfolders (expected {src}/<class>/<image>)")
    files, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (src / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
        if not found:
            empty.append(name)
    if not files:
        raise ValueError(f"image folder {src} has class subfolders {classes} but no images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    if empty:  # a class with no image would still get a label and an output of the model
        raise ValueError(f"image folder {src}: the class folder{'s' if len(empty) > 1 else ''} "
                         f"{', '.join(str(src / name) for name in empty)} hold{'' if len(empty) > 1 else 's'} no "
                         f"image ({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    return files, labels, classes


def write_image_files(files: Sequence[PathLike], labels: Sequence[int], path: PathLike, write_mode: str = "smart",
                      max_resolution: Optional[int] = None, jpeg_quality: int = 90, compress_probability: float = 0.5,
                      num_workers: int = 1, chunk_size: int = 100, skip_bad: bool = False) -> Tuple[Path, List[Path]]:
    """Write image files (anything PIL reads, converted to RGB) and their int labels to a .beton.

    `write_mode` is FFCV's: 'raw' (exact pixels), 'jpg' (lossy, smaller), 'smart' (JPEG only for large images)
    or 'proportion' (JPEG for a random `compress_probability` share); `max_resolution` shrinks images whose
    longer side is larger. An unreadable image raises ValueError naming every one (nothing is written), or with
    `skip_bad` is left out. Returns (path, the skipped files).
    """
    files, labels = [Path(f) for f in files], list(labels)
    if write_mode not in ("raw", "jpg", "smart", "proportion"):
        raise ValueError(f"write_mode must be 'raw', 'jpg', 'smart' or 'proportion', got {write_mode!r}")
    if not files:
        raise ValueError(f"no images to write to {path}")
    image_field = RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                                smart_threshold=64 * 64 * 3 if write_mode == "smart" else None,
                                compress_probability=compress_probability)
    fields = {"image": image_field, "label": IntField()}
    path = Path(path)
    with tempfile.TemporaryDirectory() as error_dir:
        written = write_fields(path, fields, FolderDataset(files, labels, error_dir), num_workers, chunk_size)
        errors = sorted(Path(error_dir).iterdir(), key=lambda p: int(p.stem))
        if not errors:
            return written, []
        written.unlink()
        details = "\n  ".join(p.read_text() for p in errors)
        if not skip_bad:
            raise ValueError(f"{len(errors)} unreadable image(s); fix or remove them, or skip them with --skip-bad:"
                             f"\n  {details}")
    bad = {int(p.stem) for p in errors}
    print(f"skipping {len(bad)} unreadable image(s), writing {path.name} again without them:\n  {details}", flush=True)
    keep = [i for i in range(len(files)) if i not in bad]
    written, more = write_image_files([files[i] for i in keep], [labels[i] for i in keep], path, write_mode,
                                      max_resolution, jpeg_quality, compress_probability, num_workers, chunk_size,
                                      skip_bad)
    return written, sorted([files[i] for i in bad] + more)


def write_image_folder(src_folder: PathLike, path: PathLike, write_mode: str = "smart",
                       max_resolution: Optional[int] = None, jpeg_quality: int = 90,
                       num_workers: int = 1) -> Path:
    """Write a folder with one subfolder per class (labels = sorted subfolder order) to a .beton.

    `write_mode`: 'raw' (exact pixels), 'jpg' (smaller file, lossy) or 'smart' (JPEG only for large
    images); `max_resolution` shrinks images whose longer side is larger. Raises ValueError naming
    every unreadable image (and writes nothing).
    """
    files, labels, _ = list_image_folder(src_folder)
    try:
        return write_image_files(files, labels, path, write_mode, max_resolution, jpeg_quality,
                                 num_workers=num_workers)[0]
    except ValueError as error:
        raise ValueError(f"write_image_folder: {src_folder}: {error}") from None


# ---------------------------------------------------------------------- digits
def digits_arrays(image_size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 RGB (N, size, size, 3) (0..16 scaled to 0..255, bilinear resize) and labels."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_LINEAR) for img in small])
    return to_rgb(big), digits.target.astype(np.int64)


def digits_split(labels: np.ndarray, val_fraction: float, split_seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified (train, val) index split."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(indices, test_size=val_fraction, random_state=split_seed, stratify=labels)
    return np.sort(train), np.sort(val)


def write_digits(folder: PathLike, image_size: int = 32, val_fraction: float = 0.2,
                 split_seed: int = 0) -> Dict[str, Path]:
    """Write scikit-learn's digits as train/val .beton files in `folder` (skipped when already valid).

    Images are 8x8 digits scaled to uint8 0..255 and resized to `image_size` (RGB, raw); the split is
    stratified and fixed by `split_seed`. Returns {"train": path, "val": path}.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"write_digits: image_size must be an int >= 8, got {image_size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"write_digits: val_fraction must be in (0, 1), got {val_fraction!r}")
    folder = Path(folder)
    stem = f"digits_{image_size}px_val{val_fraction:g}_seed{split_seed}"
    paths = {"train": folder / f"{stem}_train.beton", "val": folder / f"{stem}_val.beton"}
    images, labels = None, None
    for split, path in paths.items():
        n_val = int(np.ceil(1797 * val_fraction))
        expected = n_val if split == "val" else 1797 - n_val
        try:
            if beton_info(path) == (expected, ["image", "label"]):
                continue
        except (FileNotFoundError, ValueError):
            pass
        if images is None:
            images, labels = digits_arrays(image_size)
            split_indices = dict(zip(("train", "val"), digits_split(labels, val_fraction, split_seed)))
        chosen = split_indices[split]
        write_dataset(path, images[chosen], labels[chosen])
    return paths
