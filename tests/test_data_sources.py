"""Dataset sources on real files made here: CIFAR-10/100 archives in the official format, an image folder with
mixed formats and a corrupt file, an ImageNet layout; crafted archives; the command line's sentences."""
from __future__ import annotations

import json
import pickle
import tarfile

import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.reader import Reader

from dataset_files import make_cifar10, make_cifar100, make_image_folder, make_imagenet, CIFAR10_NAMES
from test_data_writers import read_all
from torchstrap_runtime.data import (RandomResizedCrop, SimpleRGBImageDecoder, SourceError, beton_info, prepare,
                                     read_classes)
from torchstrap_runtime.data import sources, writers


def images_and_labels(path):
    image, label = read_all(path, {"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    return image, label.ravel()


def image_sizes(path) -> list:
    """(height, width) of each stored image, from the .beton's metadata."""
    reader = Reader(str(path))
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    return list(zip(meta["height"].tolist(), meta["width"].tolist()))


def labels_of(path):
    (label,) = read_all(path, {"image": None, "label": [IntDecoder()]})
    return label.ravel()


def test_cifar10_archive_and_extracted_folder(tmp_path):
    truth = make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    paths = prepare("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out")
    for split in ("train", "val"):
        image, label = images_and_labels(paths[split])
        np.testing.assert_array_equal(image, truth[split][0])  # the R, G, B planes become HWC pixels
        np.testing.assert_array_equal(label, truth[split][1])
    assert read_classes(tmp_path / "out") == CIFAR10_NAMES
    record = json.loads((tmp_path / "out" / "train.json").read_text())
    assert (record["source"], record["count"], record["classes"], record["options"]) == ("cifar10", 100, 10,
                                                                                          {"labels": "fine"})
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    again = prepare("cifar10", tmp_path / "extracted", tmp_path / "from_folder")
    assert again["train"].read_bytes() == paths["train"].read_bytes()
    mtime = paths["val"].stat().st_mtime_ns
    prepare("cifar10", tmp_path / "cifar-10-python.tar.gz", tmp_path / "out")  # same source and options: kept
    assert paths["val"].stat().st_mtime_ns == mtime


def test_cifar100_fine_by_default_coarse_as_option(tmp_path):
    truth = make_cifar100(tmp_path / "cifar-100-python.tar.gz")
    fine = prepare("cifar100", tmp_path / "cifar-100-python.tar.gz", tmp_path / "fine")
    np.testing.assert_array_equal(labels_of(fine["val"]), truth["val"][1])
    assert read_classes(tmp_path / "fine") == truth["names"][0]
    coarse = prepare("cifar100", tmp_path / "cifar-100-python.tar.gz", tmp_path / "coarse", labels="coarse")
    image, label = images_and_labels(coarse["train"])
    np.testing.assert_array_equal(label, truth["train"][2])
    np.testing.assert_array_equal(image, truth["train"][0])
    assert read_classes(tmp_path / "coarse") == truth["names"][1]
    with pytest.raises(SourceError, match="coarse exists for cifar100 only"):
        prepare("cifar10", tmp_path / "cifar-100-python.tar.gz", tmp_path / "x", labels="coarse")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def crafted_archive(path, members: dict, links: dict = {}):
    import io
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)


def test_crafted_archives_run_no_code_and_write_nothing_outside(tmp_path):
    make_cifar10(tmp_path / "good.tar.gz", per_batch=2)
    with tarfile.open(tmp_path / "good.tar.gz") as good:
        members = {m.name: good.extractfile(m).read() for m in good if m.isfile()}
    marker = tmp_path / "pwned"
    evil = dict(members)
    evil["cifar-10-batches-py/data_batch_3"] = pickle.dumps({"data": Exploit(marker), "labels": [0]}, protocol=2)
    crafted_archive(tmp_path / "evil.tar.gz", evil)
    with pytest.raises(SourceError, match=r"data_batch_3 is not a CIFAR python pickle .*refused global posix.system"):
        prepare("cifar10", tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "train.beton").exists()

    # path traversal and a symlink standing in for a batch: nothing lands outside, the batch counts as missing
    sneaky = {k: v for k, v in members.items() if not k.endswith("data_batch_1")}
    sneaky["../../escaped.txt"] = b"outside"
    sneaky["/tmp/absolute_escape.txt"] = b"outside"
    crafted_archive(tmp_path / "sneaky.tar.gz", sneaky, links={"cifar-10-batches-py/data_batch_1": "/etc/passwd"})
    before = sorted(p for p in tmp_path.parent.rglob("*") if "out2" not in p.parts)
    with pytest.raises(SourceError, match="sneaky.tar.gz lacks data_batch_1: expected the official "
                                          "cifar-10-python.tar.gz .* from https://www.cs.toronto.edu/"):
        prepare("cifar10", tmp_path / "sneaky.tar.gz", tmp_path / "out2")
    assert sorted(p for p in tmp_path.parent.rglob("*") if "out2" not in p.parts) == before
    (tmp_path / "not_a.tar.gz").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="not_a.tar.gz is not a readable cifar-10-python.tar.gz archive"):
        prepare("cifar10", tmp_path / "not_a.tar.gz", tmp_path / "out3")


def test_missing_path_is_one_sentence_with_the_download_address(tmp_path, capsys):
    code = sources.main(["--source", "cifar100", "--path", str(tmp_path / "nope.tar.gz"), "--folder", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith(f"prepare_data: {tmp_path / 'nope.tar.gz'} does not exist: download cifar-100-python.tar.gz "
                          "by hand from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and pass --path ")
    assert sources.main(["--source", "imagenet", "--folder", str(tmp_path)]) == 2
    assert "--source imagenet needs --path: download ILSVRC-2012" in capsys.readouterr().err


def test_image_folder_mixed_formats_split_corrupt_and_skip_bad(tmp_path):
    made = make_image_folder(tmp_path / "pets", per_class=8, corrupt=True)
    with pytest.raises(SourceError, match=r"1 unreadable image\(s\).*--skip-bad:\n  .*owl/broken.jpg"):
        prepare("image-folder", tmp_path / "pets", tmp_path / "out", val_fraction=0.25, write_mode="raw")
    assert not list((tmp_path / "out").glob("*.beton")) and not list((tmp_path / "out").glob("*.tmp"))

    paths = prepare("image-folder", tmp_path / "pets", tmp_path / "out", val_fraction=0.25, write_mode="raw",
                    skip_bad=True)
    assert read_classes(tmp_path / "out") == ["cat", "dog", "owl"]
    records = {s: json.loads((tmp_path / "out" / f"{s}.json").read_text()) for s in ("train", "val")}
    assert [p for r in records.values() for p in r["skipped"]] == [str(tmp_path / "pets" / "owl" / "broken.jpg")]
    assert records["train"]["count"] + records["val"]["count"] == 24
    train, val = labels_of(paths["train"]), labels_of(paths["val"])
    assert np.bincount(val).tolist() == [2, 2, 3]  # stratified: a quarter of each class (owl's 9 with broken.jpg)
    # a raw image field keeps each file's pixels and size: match every stored image to its file
    sizes = image_sizes(paths["val"])
    from PIL import Image
    files = [f for f, label in made.items() if label is not None]
    assert set(sizes) <= {Image.open(f).size[::-1] for f in files}
    again = prepare("image-folder", tmp_path / "pets", tmp_path / "again", val_fraction=0.25, split_seed=0,
                    write_mode="raw", skip_bad=True)
    assert again["val"].read_bytes() == paths["val"].read_bytes()  # seeded split
    other = prepare("image-folder", tmp_path / "pets", tmp_path / "other", val_fraction=0.25, split_seed=1,
                    write_mode="raw", skip_bad=True)
    assert other["val"].read_bytes() != paths["val"].read_bytes()
    assert np.bincount(train).tolist() == [6, 6, 5]


def test_image_folder_with_train_and_val_subfolders(tmp_path):
    make_image_folder(tmp_path / "ds" / "train", per_class=4, seed=1, suffix_case="upper")
    make_image_folder(tmp_path / "ds" / "val", per_class=2, seed=2)
    paths = prepare("image-folder", tmp_path / "ds", tmp_path / "out", write_mode="jpg")
    assert labels_of(paths["train"]).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert labels_of(paths["val"]).tolist() == [0, 0, 1, 1, 2, 2]
    (crops,) = read_all(paths["val"], {"image": [RandomResizedCrop((16, 16), seed=0)], "label": None})
    assert crops.shape == (6, 16, 16, 3) and crops.std() > 20
    (tmp_path / "ds" / "val" / "emu").mkdir()
    (tmp_path / "ds" / "val" / "emu" / "a.png").write_bytes((tmp_path / "ds" / "val" / "cat").glob("*.png").__next__()
                                                            .read_bytes())
    with pytest.raises(SourceError, match="must have the same class folders; they differ in emu"):
        prepare("image-folder", tmp_path / "ds", tmp_path / "out2")


def test_imagenet_layout_with_ffcv_writer_settings_and_subset(tmp_path):
    make_imagenet(tmp_path / "ilsvrc")
    paths = prepare("imagenet", tmp_path / "ilsvrc", tmp_path / "out", subset=2, max_resolution=64,
                    write_mode="proportion", compress_probability=0.5, jpeg_quality=80)
    assert read_classes(tmp_path / "out") == ["n01440764", "n01443537", "n01484850"]
    assert labels_of(paths["train"]).tolist() == [0, 0, 1, 1, 2, 2]
    assert labels_of(paths["val"]).tolist() == [0, 0, 1, 1, 2, 2]
    assert max(max(size) for size in image_sizes(paths["train"])) == 64  # longer side shrunk to max_resolution
    record = json.loads((tmp_path / "out" / "train.json").read_text())
    assert record["options"]["write_mode"] == "proportion" and record["options"]["subset"] == 2
    (crops,) = read_all(paths["train"], {"image": [RandomResizedCrop((32, 32), seed=0)], "label": None})
    assert crops.shape == (6, 32, 32, 3) and crops.std() > 5  # shrunk noise, not zeros
    defaults = prepare("imagenet", tmp_path / "ilsvrc", tmp_path / "defaults", subset=1)
    options = json.loads((tmp_path / "defaults" / "val.json").read_text())["options"]
    assert (options["write_mode"], options["max_resolution"]) == ("proportion", 256)
    assert beton_info(defaults["val"])[0] == 3
    with pytest.raises(SourceError, match="must hold train/ and val/"):
        prepare("imagenet", tmp_path / "ilsvrc" / "train", tmp_path / "x")


def test_interrupted_write_leaves_no_beton(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "pets", per_class=4)
    original = writers.FolderDataset.__getitem__

    def interrupted(self, i):
        if i == 5:
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(writers.FolderDataset, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("image-folder", tmp_path / "pets", tmp_path / "out", val_fraction=0.25)
    assert list((tmp_path / "out").iterdir()) == []  # no .beton, no temporary file, no record
