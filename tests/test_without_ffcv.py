"""The runtime without FFCV: in a Python where `import ffcv` fails (a meta-path finder refuses it, as on a
machine where FFCV is not installed), the Trainer imports and trains on in-memory tensors and on a torch
DataLoader, and what is built on FFCV (data ops, the Loader, .beton files, CoKe's views) says so in one
sentence, exiting 2 from an entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REFUSE_FFCV = '''
import sys

class RefuseFFCV:
    """`import ffcv` fails as it does where FFCV is not installed."""
    def find_spec(self, name, path=None, target=None):
        if name == "ffcv" or name.startswith("ffcv."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, RefuseFFCV())
'''

TRAIN = '''
import sys
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchstrap_runtime.config import load_config
from torchstrap_runtime.trainer import Trainer

g = torch.Generator().manual_seed(0)
x = torch.randn(96, 3, 8, 8, generator=g)
y = (x[:, 0].mean((1, 2)) > 0).long()


class InMemory(Trainer):
    def initialize_model(self):
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                         torch.nn.Flatten(), torch.nn.Linear(8, 2))

    def initialize_train_loader(self):
        self.train_loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]

    def initialize_val_loader(self):
        self.val_loader = [(x[64:], y[64:])]


class FromDataLoader(InMemory):
    def initialize_train_loader(self):
        self.train_loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True, generator=g)

    def initialize_val_loader(self):
        self.val_loader = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)


for cls in (InMemory, FromDataLoader):
    load_config([f"--logging.folder={sys.argv[1]}", f"--logging.run_id={cls.__name__}", "--training.epochs=3",
                 "--logging.progress=false", "--model.num_classes=2", "--optimizer.lr=0.1",
                 "--training.channels_last=true"])
    record = cls().run()
    print(cls.__name__, record["train_loss"], record["val_top1"])
assert not [name for name in sys.modules if name == "ffcv" or name.startswith("ffcv.")]
'''

NEEDS_FFCV = '''
import sys
from torchstrap_runtime.errors import exit_on_user_error

def main(argv):
    if argv[0] == "data":
        from torchstrap_runtime.data import Loader  # noqa: F401
    else:
        from torchstrap.torchvision_pipelines import coke_imagenet_multi_view  # noqa: F401

exit_on_user_error(main, sys.argv[1:])
'''


def run_without_ffcv(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(REFUSE_FFCV))
    (tmp_path / "script.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, str(tmp_path / "script.py"), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_refusal_is_real(tmp_path):
    proc = run_without_ffcv(tmp_path, "import ffcv\n")
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'ffcv'" in proc.stderr


def test_trainer_trains_on_tensors_and_a_dataloader_without_ffcv(tmp_path):
    proc = run_without_ffcv(tmp_path, TRAIN, str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("InMemory", "From")))
    assert set(lines) == {"InMemory", "FromDataLoader"}
    for name in lines:
        assert (tmp_path / "runs" / name / "checkpoints" / "last.pt").exists()
        assert (tmp_path / "runs" / name / "log.jsonl").read_text().count('"kind": "epoch"') == 3


def test_what_needs_ffcv_says_so_in_one_sentence(tmp_path):
    for what, named in (("data", "torchstrap_runtime.data (the seeded ops, the Loader and .beton files) needs FFCV"),
                        ("views", "the self-supervised views (seeded FFCV pipelines: CoKe's and the baselines') "
                                  "needs FFCV")):
        proc = run_without_ffcv(tmp_path, NEEDS_FFCV, what)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"error: {named}, which does not import here (No module named 'ffcv')")
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
