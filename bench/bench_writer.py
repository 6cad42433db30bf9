"""Writing speed (images/s) of an image folder -> .beton: torchstrap's writer against FFCV's own.

The folder: the 256 px benchmark JPEGs (bench/datasets.py, 224-288 px per side) as files in ten class
subfolders. Both sides use FFCV's ImageNet settings: RGBImageField(write_mode="proportion",
compress_probability=0.5, max_resolution=256, jpeg_quality=90) and an IntField. Contenders:
- torchstrap `write_image_files` in this process (num_workers=1: progress bar, unreadable files reported),
- torchstrap `write_image_files` with 2 FFCV worker processes,
- FFCV's own `DatasetWriter.from_indexed_dataset` with 2 workers over a PIL dataset (what FFCV's ImageNet
  example does with torchvision's ImageFolder; written here without torchvision).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import Summary, interleave, parser, print_table, write_results
from datasets import export_jpegs, spec

SETTINGS = dict(write_mode="proportion", compress_probability=0.5, max_resolution=256, jpeg_quality=90)


def class_folder(flat: Path, root: Path) -> tuple[list[Path], list[int]]:
    """<index>_<label>.jpg files linked into root/<label>/; (files, labels) in the image-folder order."""
    from torchstrap_runtime.data.writers import list_image_folder

    for jpeg in sorted(flat.glob("*.jpg")):
        label = jpeg.stem.split("_")[1]
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        (root / f"class{label}" / jpeg.name).symlink_to(jpeg)
    files, labels, _ = list_image_folder(root)
    return files, labels


class PILFolder:
    """(PIL image, label) per file: the indexed dataset FFCV's own writer is given."""

    def __init__(self, files, labels):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return image.convert("RGB"), self.labels[i]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    s = spec(256, args.quick)
    flat = export_jpegs(s)
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from torchstrap_runtime.data import write_image_files

    with tempfile.TemporaryDirectory(prefix="bench_writer_") as tmp:
        tmp = Path(tmp)
        files, labels = class_folder(flat, tmp / "folder")
        n = len(files)

        def ours(workers: int):
            def run() -> float:
                start = time.perf_counter()
                write_image_files(files, labels, tmp / f"ours{workers}.beton", num_workers=workers, **SETTINGS)
                return n / (time.perf_counter() - start)
            return run

        def ffcv() -> float:
            start = time.perf_counter()
            field = RGBImageField(write_mode=SETTINGS["write_mode"], max_resolution=SETTINGS["max_resolution"],
                                  jpeg_quality=SETTINGS["jpeg_quality"],
                                  compress_probability=SETTINGS["compress_probability"])
            writer = DatasetWriter(str(tmp / "ffcv.beton"), {"image": field, "label": IntField()}, num_workers=2)
            writer.from_indexed_dataset(PILFolder(files, labels), chunksize=100)
            return n / (time.perf_counter() - start)

        contenders = {"torchstrap, 1 process": ours(1), "torchstrap, 2 workers": ours(2), "FFCV DatasetWriter, 2 workers": ffcv}
        print(f"\n=== image folder -> .beton, {n} JPEGs of 224-288 px, {rounds} round(s) ===")
        values = interleave(contenders, rounds)
    summaries = [Summary(name, "images/s", v) for name, v in values.items()]
    print_table("writing speed (higher is better), ratios to FFCV's own writer", summaries,
                reference="FFCV DatasetWriter, 2 workers")
    write_results("writer" + ("_quick" if args.quick else ""),
                  {"images": n, "settings": SETTINGS, "results": [x.as_dict() for x in summaries]})


if __name__ == "__main__":
    main()
