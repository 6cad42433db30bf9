"""save_augmentation_grids and the template's scripts/show_augmentations.py write real PNG grids."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from torchstrap_runtime.data.pictures import save_augmentation_grids, write_colour_digits

SCRIPT = Path(__file__).parents[1] / "template" / "scripts" / "show_augmentations.py"


def test_grids_are_written_and_show_the_seed_semantics(tmp_path):
    beton = write_colour_digits(tmp_path / "colour.beton", n=60)
    paths = save_augmentation_grids(beton, tmp_path / "pictures")
    assert [p.name for p in paths] == ["seeds.png", "ops.png", "views.png"]
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # pictures, not blank figures


def test_template_script_runs(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "pics")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["ops.png", "seeds.png", "views.png"]
    assert (tmp_path / "data" / "colour_digits.beton").exists()
