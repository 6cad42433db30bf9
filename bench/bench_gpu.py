"""GPU training speed: torchstrap's Trainer vs a raw PyTorch loop with the same settings, in the same process.

Rows: ResNet-50 at 176 px and ResNet-18 at 160 px, batch 256, 1000 classes, bfloat16 autocast, channels_last,
fused SGD (momentum 0.9), cudnn.benchmark; a second row per model adds torch.compile. The data are synthetic
uint8 images held in page-locked host memory, copied to the GPU each step without blocking and normalised
there (`ImageNormalizer`), as FFCV's ImageNet recipe delivers them. Both contenders read the loss back every
`--log-every` steps and nowhere else. Each measurement runs two epochs and times the second (the first
compiles, lets cuDNN choose its algorithms and warms the allocator); contenders are interleaved over rounds.

Figures per row: images/s of both and their ratio (target >= 0.97x), the Trainer's data-wait share and peak
memory, and the share of the GPU's peak dense bfloat16 throughput that a training step reaches: the model's
FLOPs per image (forward and backward, counted by torch.utils.flop_counter) x images/s / the peak
(`PEAK_BF16_TFLOPS`, by GPU name).

    python bench/bench_gpu.py [--quick] [--rounds N] [--steps N] [--no-compile]

Without CUDA only `--quick` runs: a tiny conv net at 32 px on the CPU, the same code path (figures not
meaningful); the GPU rows are written as not measured.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common import REPO_DIR, Summary, interleave, parser, print_table, write_results

sys.path.insert(0, str(REPO_DIR))

# dense (no sparsity) bfloat16 tensor-core peaks in TFLOP/s from the vendors' data sheets; the first name
# contained in torch.cuda.get_device_name() wins, so the more specific names come first
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "B200": 2250.0,
    "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
}
MEAN, STD = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)   # ImageNet's, on the 0..255 scale
TARGET_RATIO = 0.97


@dataclass(frozen=True)
class Case:
    """One model at one resolution."""

    label: str
    model: str
    image_size: int
    batch: int
    classes: int = 1000


GPU_CASES = (Case("ResNet-50, 176 px", "resnet50", 176, 256), Case("ResNet-18, 160 px", "resnet18", 160, 256))
QUICK_CASES = (Case("tiny conv net, 32 px (quick, CPU)", "tiny", 32, 32, classes=10),)


def make_model(case: Case) -> nn.Module:
    """The case's network (`torchstrap_runtime.models.build_model`, or a tiny conv net for --quick)."""
    torch.manual_seed(0)
    if case.model == "tiny":
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                             nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, case.classes))
    from torchstrap_runtime.models import build_model

    return build_model(case.model, case.classes, image_size=case.image_size)


def synthetic_batches(case: Case, count: int, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` distinct batches of random uint8 NCHW images and labels in host memory (page-locked with `pin`)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        images = torch.randint(0, 256, (case.batch, 3, case.image_size, case.image_size), dtype=torch.uint8,
                               generator=g)
        labels = torch.randint(0, case.classes, (case.batch,), generator=g)
        batches.append((images.pin_memory(), labels.pin_memory()) if pin else (images, labels))
    return batches


def training_flops_per_image(case: Case) -> float:
    """FLOPs of one image's forward and backward pass, counted on the CPU in float32 (batch 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model(case)
    images = torch.randn(2, 3, case.image_size, case.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images).sum().backward()
    return counter.get_total_flops() / 2


def peak_tflops(device_name: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


# ---------------------------------------------------------------- the raw loop
def raw_loop(case: Case, batches: list, steps: int, device: torch.device, compile: bool, log_every: int,
             stats: dict) -> float:
    """What a researcher writes by hand with the same settings; returns images/s of its second epoch."""
    from torchstrap_runtime.normalize import ImageNormalizer

    model = make_model(case).to(device, memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5, fused=True)
    forward = torch.compile(model) if compile else model
    criterion = nn.CrossEntropyLoss()
    normalize = ImageNormalizer(MEAN, STD, torch.bfloat16)
    model.train()
    rate = 0.0
    for epoch in range(2):
        reset_peak(device)
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            images, labels = batches[step % len(batches)]
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = criterion(forward(normalize(images)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % log_every == 0:
                loss.item()
        loss.item()
        rate = steps * case.batch / (time.perf_counter() - start)
    stats.setdefault("raw_peak_mb", []).append(peak_mb(device))
    return rate


# ---------------------------------------------------------------- the Trainer
def trainer_class():
    """A Trainer subclass over in-memory batches, normalising them on the device as the raw loop does."""
    from torchstrap_runtime.normalize import ImageNormalizer
    from torchstrap_runtime.trainer import Trainer

    class BenchTrainer(Trainer):
        case: Case
        batches: list = []
        steps = 0

        def initialize_model(self) -> None:
            self.model = make_model(self.case)

        def initialize_train_loader(self) -> None:
            self.train_loader = [self.batches[i % len(self.batches)] for i in range(self.steps)]

        def initialize_val_loader(self) -> None:
            self.val_loader = []

        def to_device(self, batch):
            inputs, targets = super().to_device(batch)
            if not hasattr(self, "normalize"):
                self.normalize = ImageNormalizer(MEAN, STD, torch.bfloat16)
            return self.normalize(inputs), targets

    return BenchTrainer


def trainer_run(cls, case: Case, batches: list, steps: int, folder: Path, device: torch.device, compile: bool,
                log_every: int, stats: dict) -> float:
    """Build the Trainer (config as the raw loop's settings), train two epochs; images/s of the second."""
    from torchstrap_runtime.config import load_config

    run = f"run{len(list(folder.iterdir())) if folder.exists() else 0}"
    load_config([f"--logging.folder={folder}", f"--logging.run_id={run}", "--training.epochs=2",
                 f"--training.device={device.type}", "--training.dtype=bfloat16", "--training.channels_last=true",
                 f"--training.compile={str(compile).lower()}", "--training.cudnn_benchmark=true",
                 "--training.pin_memory=true", "--optimizer.name=sgd", "--optimizer.lr=0.1",
                 "--optimizer.momentum=0.9", "--optimizer.weight_decay=5e-5", "--optimizer.fused=true",
                 "--scheduler.name=none", "--logging.eval_each_epoch=false", f"--logging.log_every={log_every}",
                 "--logging.progress=false", f"--model.num_classes={case.classes}", "--training.seed=0"])
    cls.case, cls.batches, cls.steps = case, batches, steps
    second = cls().run()  # the last epoch's record: its images/s, data-wait share and peak memory
    stats.setdefault("data_wait_share", []).append(second["data_wait_share"])
    stats.setdefault("peak_memory_mb", []).append(second["peak_memory_mb"] if device.type == "cuda" else float("nan"))
    return second["images_per_s"]


def measure(case: Case, compile: bool, device: torch.device, steps: int, rounds: int, log_every: int,
            folder: Path) -> dict:
    """One row: both contenders interleaved over `rounds`; their images/s, ratio, data wait, memory, share of peak."""
    batches = synthetic_batches(case, 8 if device.type == "cuda" else 2, pin=device.type == "cuda")
    cls, stats = trainer_class(), {}
    label = f"{case.label}, bf16 + channels_last{' + compile' if compile else ''}"
    print(f"\n=== {label}: batch {case.batch}, {steps} steps per epoch, {rounds} rounds on {device} ===", flush=True)
    values = interleave({
        "raw loop": lambda: raw_loop(case, batches, steps, device, compile, log_every, stats),
        "Trainer": lambda: trainer_run(cls, case, batches, steps, folder / label.replace(" ", "_").replace(",", ""),
                                       device, compile, log_every, stats),
    }, rounds)
    summaries = [Summary(name, "img/s", v) for name, v in values.items()]
    print_table(f"{label}: images per second (higher is better)", summaries, reference="raw loop")
    raw, ours = summaries
    flops = training_flops_per_image(case)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_tflops(name) if device.type == "cuda" else None
    share = ours.median * flops / (peak * 1e12) if peak else None
    row = {"label": label, "model": case.model, "image_size": case.image_size, "batch": case.batch,
           "compile": compile, "device": name, "steps_per_epoch": steps, "contenders": [s.as_dict() for s in summaries],
           "ratio": ours.median / raw.median, "data_wait_share": Summary("wait", "", stats["data_wait_share"]).median,
           "peak_memory_mb": Summary("mem", "MiB", stats["peak_memory_mb"]).median,
           "flops_per_image": flops, "peak_bf16_tflops": peak, "share_of_peak": share}
    print(f"  Trainer / raw loop {row['ratio']:.3f} (target >= {TARGET_RATIO}); data wait "
          f"{100 * row['data_wait_share']:.1f}%; peak memory {row['peak_memory_mb']:.0f} MiB; "
          f"{flops / 1e9:.2f} GFLOP per image (forward + backward)"
          + (f"; {100 * share:.1f}% of the {name}'s {peak:g} TFLOP/s bf16 peak" if share else ""), flush=True)
    return row


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (two epochs per measurement)")
    p.add_argument("--log-every", type=int, default=None, help="steps between loss reads (both contenders)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    name = "gpu" + ("_quick" if args.quick else "")
    if not cuda and not args.quick:
        print("no CUDA GPU here: the GPU rows are not measured (bench_gpu.py --quick runs the code path on the CPU)")
        write_results(name, {"quick": False, "not_measured": "no CUDA GPU on the machine that ran the benchmarks",
                             "rows": []})
        return
    device = torch.device("cuda" if cuda else "cpu")
    cases = QUICK_CASES if args.quick and not cuda else GPU_CASES
    if args.quick and cuda:
        cases = tuple(Case(c.label, c.model, c.image_size, c.batch // 4) for c in GPU_CASES)
    steps = args.steps or (4 if args.quick else 80)
    rounds = args.rounds or (1 if args.quick else 3)
    log_every = args.log_every or (2 if args.quick else 50)
    if not cuda:
        torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for case in cases:
            for compile in (False, True)[: 1 if args.no_compile else 2]:
                rows.append(measure(case, compile, device, steps, rounds, log_every, Path(tmp)))
    torch.backends.cudnn.benchmark = False
    write_results(name, {"quick": args.quick, "cuda": cuda, "rounds": rounds, "log_every": log_every,
                         "target_ratio": TARGET_RATIO, "rows": rows})


if __name__ == "__main__":
    main()
