"""Where the time goes: the data-bottleneck report of a run (`doctor.json` in its run folder).

    images/s of the loader alone, of the training step alone (on a cached batch), of both together (the epoch)
    per pipeline op: its wall-clock µs per image inside the loader (timed on a few sampled batches)
    the JPEG decode ceiling of this machine's cores on this dataset's images (RAW storage: no decode)
    the data-wait share of the epoch, and advice with the numbers behind it

`after_first_epoch(trainer)` runs it once per run, after the first training epoch (`logging.doctor`);
`diagnose(trainer)` measures on demand (`torchstrap doctor RUN_DIR`, `--doctor` on a training command).

The op timings run the loader's own compiled pipeline on sampled batches, each op's call timed; the loader
alone is a separate, untimed pass over the same batches, so the two can be compared. The training step is
measured with the trainer's hooks (`train_step`, `backward`, `optimizer_step`) on a copy of one batch; the
weights, optimizer, scheduler, scaler, criterion, EMA and RNGs are restored afterwards, so a run with the
report is bitwise the run without it.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .batches import batch_size, limited_len
from .config import param
from .command_line import split_options
from .errors import UserError
from .run_folder import CONFIG_FILE, DOCTOR_FILE, write_json_atomic

COST_SHARE = 0.02        # the report's time budget, as a share of the epoch it follows
SAMPLED_BATCHES = (2, 8)  # fewest and most batches each measurement times (after one warm-up batch)
DATA_BOUND_WAIT = 0.10   # an epoch that waited this share of its time or more on data is data-bound
SLOW_OP_SHARE = 0.25     # an op taking this share of the loader's time or more is named as the one to fix
DECODERS = ("RandomResizedCrop", "SimpleRGBImageDecoder", "CenterCropRGBImageDecoder",
            "RandomResizedCropRGBImageDecoder", "ResizedCropRGBImageDecoder")
HAND_OVER = ("loader", "between batches")  # the row of the loading thread's time outside the ops
NEAR_CEILING = 0.70      # a loader at this share of the decode ceiling or more is limited by JPEG decoding


# ---------------------------------------------------------------------- helpers
def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fits_the_budget(epoch_batches: int) -> bool:
    """Whether the smallest report (`SAMPLED_BATCHES[0]` batches per measurement, each timed three times after
    a warm-up) costs at most `COST_SHARE` of an epoch of `epoch_batches` batches."""
    return 4 * (SAMPLED_BATCHES[0] + 1) <= COST_SHARE * epoch_batches


def sampled_batches(epoch_batches: int | None) -> int:
    """Batches per measurement that keep the report near `COST_SHARE` of an epoch of `epoch_batches` batches
    (three measurements of a batch each, plus warm-ups), within `SAMPLED_BATCHES`."""
    fewest, most = SAMPLED_BATCHES
    if not epoch_batches:
        return fewest
    return int(min(most, max(fewest, COST_SHARE * epoch_batches / 4)))


def clone_batch(batch: Any) -> Any:
    """A copy of a batch (tensors and arrays copied, lists and tuples rebuilt), safe from buffer reuse."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, np.ndarray):
        return batch.copy()
    if isinstance(batch, (list, tuple)):
        return type(batch)(clone_batch(item) for item in batch)
    return batch


def synchronize(device: Any = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def is_seeded_loader(loader: Any) -> bool:
    """Whether `loader` is torchstrap's FFCV Loader (not imported here when nothing imported it)."""
    module = sys.modules.get("torchstrap_runtime.data.loader")
    return module is not None and isinstance(loader, module.Loader)


# ---------------------------------------------------------------------- the loader alone
def sample_order(loader: Any, batches: int) -> np.ndarray:
    """The first `batches` + 1 batches (one warm-up) of the loader's current epoch order."""
    order = loader.epoch_order(loader.epoch or 0)
    return order[:(batches + 1) * loader.batch_size]


def epoch_iterator(loader: Any, batches: int, code: tuple | None = None, timing: list | None = None) -> Any:
    """A loading thread over `sample_order`, without touching the loader's epoch or position; with `timing`,
    `timing[0]` is true while the batches after the first one run."""
    from .data.loader import SeededEpochIterator

    class TimedEpochIterator(SeededEpochIterator):
        """Records when the loading thread starts and ends each batch (`spans`)."""
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.spans: list[tuple[float, float]] = []  # before the thread starts
            super().__init__(*args, **kwargs)

        def run_pipeline(self, b_ix: int, *args: Any) -> Any:
            if timing is not None:
                timing[0] = b_ix > 0
            started = time.perf_counter()
            result = super().run_pipeline(b_ix, *args)
            self.spans.append((started, time.perf_counter()))
            return result

    if loader.code is None:
        loader.generate_code()
    epoch = loader.epoch or 0
    return TimedEpochIterator(loader, sample_order(loader, batches), loader.rng_keys(epoch), loader.op_params(),
                              code=code)


def measure_loader(loader: Any, batches: int) -> tuple[float, Any]:
    """(images/s of the loader alone over `batches` batches after a warm-up one, a copy of the last batch).

    Timed in the loading thread, from the start of its second batch to the end of its last: the consumer's
    clock would count batches made ahead while it waited for the GIL (small batches take less than Python's
    5 ms switch interval) as free."""
    iterator = epoch_iterator(loader, batches)
    images, batch = 0, None
    try:
        next(iterator)
        for batch in iterator:
            images += batch_size(batch)
    finally:
        iterator.close()
        iterator.join(timeout=60)
    elapsed = iterator.spans[-1][1] - iterator.spans[1][0] if len(iterator.spans) > 1 else 0.0
    return images / max(elapsed, 1e-9), clone_batch(batch)  # copied once the thread is done (no contention)


# ---------------------------------------------------------------------- each op
def op_names(loader: Any) -> dict[int, tuple[str, str]]:
    """{node id: (output name, op class name)} of every op of the loader's pipelines."""
    from ffcv.pipeline.graph import DecoderNode

    names: dict[int, tuple[str, str]] = {}
    for output, leaf in loader.graph.leaf_nodes.items():
        node = leaf
        while node is not None:
            op = node.decoder if isinstance(node, DecoderNode) else getattr(node, "operation", None)
            if op is not None:
                names.setdefault(node.id, (output, type(op).__name__))
            node = node.parent
    return names


CALL = re.compile(r"(?:init_shared_state_)?code_(\d+)")


def timed_code(code: tuple, seconds: dict[int, float], timing: list[bool]) -> tuple:
    """The loader's compiled stages with every op call timed into `seconds[node id]` while `timing[0]`.

    A stage is a plain Python function calling each op's (compiled) function by a global name `code_<node>`:
    the copy sees timing wrappers under those names, so the same compiled functions run, nothing is compiled."""
    stages, outputs = code

    def timer(function: Any, node_id: int) -> Any:
        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            result = function(*args)
            if timing[0]:
                synchronize()  # an op on the device returns before its work is done
                seconds[node_id] += time.perf_counter() - started
            return result
        return timed

    timed_stages = []
    for stage, defined in stages:
        namespace = dict(stage.__globals__)
        for name, function in stage.__globals__.items():
            match = CALL.fullmatch(name)
            if match:
                namespace[name] = timer(function, int(match.group(1)))
        timed_stages.append((types.FunctionType(stage.__code__, namespace, stage.__name__), defined))
    return timed_stages, outputs


def time_ops(loader: Any, batches: int) -> list[dict[str, Any]]:
    """Wall-clock µs per image of every op of the loader (its pipelines' ops in order), over `batches` sampled
    batches after a warm-up one; ops of several threads (`num_workers`) count their wall time."""
    if loader.code is None:
        loader.generate_code()
    seconds: dict[int, float] = defaultdict(float)
    timing = [False]
    iterator = epoch_iterator(loader, batches, code=timed_code(loader.code, seconds, timing), timing=timing)
    images = 0
    try:
        next(iterator)  # the warm-up batch, untimed
        for batch in iterator:
            images += batch_size(batch)
    finally:
        iterator.close()
        iterator.join(timeout=60)
    names = op_names(loader)
    timings = [{"pipeline": names[node_id][0], "op": names[node_id][1],
                "us_per_image": 1e6 * seconds.get(node_id, 0.0) / max(images, 1)} for node_id in sorted(names)]
    # the loading thread between two timed batches (as `measure_loader` counts it): handing the batch over to
    # the loop (the GIL), the next indices
    spans = iterator.spans
    between = sum(spans[i][0] - spans[i - 1][1] for i in range(2, len(spans)))
    timings.append({"pipeline": HAND_OVER[0], "op": HAND_OVER[1], "us_per_image": 1e6 * between / max(images, 1)})
    return timings


# ---------------------------------------------------------------------- the training step alone
def training_state(trainer: Any) -> dict[str, Any]:
    """A copy of everything a training step changes."""
    criterion = getattr(trainer, "criterion", None)
    state = {"model": trainer.raw_model.state_dict(), "ema": trainer.ema,
             "optimizer": trainer.optimizer.state_dict() if trainer.optimizer is not None else None,
             "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
             "scaler": trainer.scaler.state_dict(),
             "criterion": criterion.state_dict() if isinstance(criterion, torch.nn.Module) else None}
    return {**copy.deepcopy(state), "rng": ckpt.rng_state(), "data": trainer.data, "loss": trainer.loss}


def restore_training_state(trainer: Any, state: dict[str, Any]) -> None:
    trainer.raw_model.load_state_dict(state["model"])
    trainer.ema = state["ema"]
    if trainer.optimizer is not None:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    if state["criterion"] is not None:
        trainer.criterion.load_state_dict(state["criterion"])
    ckpt.set_rng_state(state["rng"])
    trainer.data, trainer.loss = state["data"], state["loss"]


def measure_step(trainer: Any, batch: Any, steps: int) -> float:
    """Images/s of `steps` training steps (`train_step`, `backward`, `optimizer_step`) on `batch`, after a
    warm-up step; the trainer's state is restored afterwards."""
    state = training_state(trainer)
    try:
        trainer.data = batch
        for step in range(steps + 1):
            if step == 1:
                synchronize(trainer.device)
                started = time.perf_counter()
            loss = trainer.train_step()
            trainer.backward(loss)
            trainer.optimizer_step()
        synchronize(trainer.device)
        elapsed = time.perf_counter() - started
    finally:
        restore_training_state(trainer, state)
    return steps * batch_size(batch) / max(elapsed, 1e-9)


def measure_together(trainer: Any, loader: Any, batches: int) -> tuple[float, float]:
    """(images/s, data-wait share) of the loader feeding the training step over `batches` batches after a
    warm-up one, as the loop does (the loading thread runs beside the step); the trainer's state is restored."""
    state = training_state(trainer)
    iterator = epoch_iterator(loader, batches)
    try:
        trainer.modules.train()
        waited, images, started = 0.0, 0, None
        while True:
            tick = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                break
            if started is None:  # the warm-up batch: its wait and step are not counted
                started = time.perf_counter()
            else:
                waited += time.perf_counter() - tick
                images += batch_size(batch)
            trainer.data = batch
            loss = trainer.train_step()
            trainer.backward(loss)
            trainer.optimizer_step()
        synchronize(trainer.device)
        elapsed = max(time.perf_counter() - (started or 0.0), 1e-9)
    finally:
        iterator.close()
        iterator.join(timeout=60)
        restore_training_state(trainer, state)
    return images / elapsed, waited / elapsed


# ---------------------------------------------------------------------- the decode ceiling
def image_fields(loader: Any) -> dict[str, np.ndarray]:
    """{stored image field: its metadata column (mode, height, width, data_ptr per sample)}."""
    from ffcv.fields.rgb_image import RGBImageField

    reader = loader.reader
    columns = dict(zip(reader.field_names, reader.metadata.dtype.names))
    return {name: reader.metadata[columns[name]] for name, handler in reader.handlers.items()
            if isinstance(handler, RGBImageField)}


def decode_ceiling(loader: Any, images: int) -> dict[str, Any] | None:
    """How fast this machine's cores decode this dataset's JPEGs (a sample of `images`), whole, from memory:
    {"storage": "jpeg", "images_per_s_one_core", "cores", "images_per_s", "mean_side_px"}; RAW storage says so.
    None when the loader stores no image."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    fields = image_fields(loader)
    if not fields:
        return None
    column = next(iter(fields.values()))
    indices = np.asarray(loader.indices, dtype=np.int64)
    side = float(np.sqrt(np.mean(column["height"][indices].astype(float) * column["width"][indices])))
    jpeg = indices[column["mode"][indices] == IMAGE_MODES["jpg"]]
    if len(jpeg) == 0:
        return {"storage": "raw", "mean_side_px": side}
    chosen = np.random.default_rng(0).choice(jpeg, min(images, len(jpeg)), replace=False)
    table = loader.reader.alloc_table
    by_pointer = np.argsort(table["ptr"])
    pointers = column["data_ptr"][chosen].astype(np.uint64)
    sizes = table["size"][by_pointer][np.searchsorted(table["ptr"][by_pointer], pointers)].astype(np.int64)
    data = np.memmap(loader.fname, dtype=np.uint8, mode="r")
    blob = np.concatenate([np.asarray(data[p:p + s]) for p, s in zip(pointers.astype(np.int64), sizes)])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    heights, widths = column["height"][chosen].astype(np.int64), column["width"][chosen].astype(np.int64)
    largest = int((heights * widths).max()) * 3
    scratch, out = np.empty(largest, np.uint8), np.empty(largest, np.uint8)
    from .data.jpeg_decode import decode_jpegs as kernel

    kernel(blob, offsets[:1], sizes[:1], heights[:1], widths[:1], scratch, out)  # loads (or compiles) it
    started = time.perf_counter()
    failures = kernel(blob, offsets, sizes, heights, widths, scratch, out)
    rate = len(chosen) / max(time.perf_counter() - started, 1e-9)
    return {"storage": "jpeg", "images_per_s_one_core": rate, "cores": cores(), "images_per_s": rate * cores(),
            "mean_side_px": side, "jpeg_share": len(jpeg) / len(indices), "failed": int(failures)}


# ---------------------------------------------------------------------- advice
def advise(report: dict[str, Any]) -> list[str]:
    """Concrete advice, each with the numbers behind it, from a report's measurements."""
    loader, step = report.get("loader_images_per_s"), report.get("step_images_per_s")
    wait, ops = report.get("data_wait_share"), report.get("ops") or []
    advice: list[str] = []
    data_bound = (loader is not None and step is not None and loader < step) or (wait or 0) >= DATA_BOUND_WAIT
    if not data_bound:
        if loader is not None and step is not None:
            advice.append(f"the training step is the limit ({step:,.0f} img/s alone vs the loader's {loader:,.0f} "
                          f"img/s): data settings will not speed this run up; a larger data.batch_size (the step "
                          f"at {report['batch_size']} images), training.dtype bfloat16 or training.compile may")
        return advice
    total = sum(op["us_per_image"] for op in ops)
    for op in sorted(ops, key=lambda op: -op["us_per_image"]):  # decoders: see the decode ceiling below
        if total and op["us_per_image"] >= SLOW_OP_SHARE * total and op["op"] not in DECODERS \
                and (op["pipeline"], op["op"]) != HAND_OVER:
            advice.append(f"{op['op']} ({op['pipeline']} pipeline) takes {op['us_per_image']:,.0f} µs per image, "
                          f"{op['us_per_image'] / total:.0%} of the loader's time: make it cheaper, move it to the "
                          f"device, or drop it")
    workers, available = report.get("num_workers"), report.get("cores")
    if workers and available and workers < available:
        advice.append(f"data.num_workers is {workers} of {available} cores: the loader's ops run on num_workers "
                      f"threads; raise it to {available} (up to {loader * available / workers:,.0f} img/s from "
                      f"{loader:,.0f}, the step takes {step:,.0f})" if loader and step else
                      f"data.num_workers is {workers} of {available} cores: raise it to {available}")
    if report.get("os_cache") is False:
        size, memory = report.get("dataset_bytes"), available_memory()
        if size and memory and size < memory / 2:
            advice.append(f"data.os_cache is false but the dataset ({size / 2**30:.1f} GiB) fits in memory "
                          f"({memory / 2**30:.1f} GiB available): set data.os_cache true")
    ceiling = report.get("decode_ceiling") or {}
    if ceiling.get("storage") == "jpeg" and loader:
        share = loader / ceiling["images_per_s"]
        if share >= NEAR_CEILING:
            smaller = 160
            side = ceiling["mean_side_px"]
            advice.append(f"the loader runs at {share:.0%} of this machine's JPEG decode ceiling ({ceiling['images_per_s']:,.0f} "
                          f"img/s on {ceiling['cores']} cores, images of ~{side:.0f} px): store the dataset at a lower "
                          f"resolution (decoding costs ~pixels: ~{(side / smaller) ** 2:.1f}x faster at {smaller} px) or "
                          f"RAW (no decoding, ~{side * side * 3 / 2**10:.0f} KiB per image)")
    normalize = [op for op in ops if op["op"] in ("NormalizeImage", "Convert")]
    cost = sum(op["us_per_image"] for op in normalize)
    if normalize and total and cost >= 0.10 * total:
        advice.append(f"normalising on the CPU ({', '.join(op['op'] for op in normalize)}) takes {cost:,.0f} µs per "
                      f"image, {cost / total:.0%} of the loader's time: on a GPU move it to the device "
                      f"(NormalizeOnDevice: uint8 crosses the bus, 4x fewer bytes)")
    if not advice:
        advice.append(f"the loader ({loader or 0:,.0f} img/s) is the limit (data wait {wait or 0:.0%}); no single "
                      f"op, setting or the decode ceiling explains it")
    return advice


def available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------------- the report
def diagnose(trainer: Any, epoch_record: dict[str, Any] | None = None, batches: int | None = None) -> dict[str, Any]:
    """Measure the trainer's training loader and step; `epoch_record`: the epoch just run (images_per_s,
    data_wait_share). `batches`: batches per measurement (default: fit `COST_SHARE` of an epoch)."""
    started = time.perf_counter()
    loader = trainer.train_loader
    epoch_batches = limited_len(loader, getattr(trainer, "limit_train_batches", 0))  # the epoch's batches
    batches = batches or sampled_batches(epoch_batches)
    record = epoch_record or {}
    report: dict[str, Any] = {"sampled_batches": batches, "cores": cores(),
                              "together_images_per_s": record.get("images_per_s"),
                              "data_wait_share": record.get("data_wait_share")}
    cached = clone_batch(trainer.data) if trainer.data is not None else None
    phases: dict[str, float] = {}
    if is_seeded_loader(loader):
        report.update(batch_size=loader.batch_size, num_workers=loader.num_workers,
                      os_cache=type(loader.memory_manager).__name__ == "OSCacheManager",
                      dataset_bytes=Path(loader.fname).stat().st_size)
        report["loader_images_per_s"], first = measure_loader(loader, batches)
        phases["loader"] = time.perf_counter() - started
        cached = cached if cached is not None else first
        report["ops"] = time_ops(loader, batches)
        phases["ops"] = time.perf_counter() - started - sum(phases.values())
        report["ops_us_per_image"] = sum(op["us_per_image"] for op in report["ops"])  # with between batches
        report["loader_us_per_image"] = 1e6 / report["loader_images_per_s"]
        report["decode_ceiling"] = decode_ceiling(loader, images=loader.batch_size)
        phases["decode_ceiling"] = time.perf_counter() - started - sum(phases.values())
    else:
        report.update(batch_size=batch_size(cached) if cached is not None else None, loader_images_per_s=None,
                      ops=None, decode_ceiling=None,
                      note="the loader alone, its ops and the decode ceiling are measured on torchstrap "
                           "(FFCV) loaders only")
    if cached is not None and trainer.optimizer is not None:
        report["step_images_per_s"] = measure_step(trainer, cached, batches)
        phases["step"] = time.perf_counter() - started - sum(phases.values())
        if epoch_record is None and is_seeded_loader(loader):  # on demand: no epoch was just run
            report["together_images_per_s"], report["data_wait_share"] = measure_together(trainer, loader, batches)
    report["bottleneck"] = bottleneck(report)
    report["advice"] = advise(report)
    report["cost_s"] = time.perf_counter() - started
    report["cost_s_by_measurement"] = phases
    together = report["together_images_per_s"]
    if together and epoch_batches and report["batch_size"]:
        report["epoch_s"] = epoch_batches * report["batch_size"] / together
        report["cost_share"] = report["cost_s"] / report["epoch_s"]
    return report


def bottleneck(report: dict[str, Any]) -> str:
    loader, step = report.get("loader_images_per_s"), report.get("step_images_per_s")
    if loader is not None and step is not None:
        return "data" if loader < step else "training step"
    wait = report.get("data_wait_share")
    return "unknown" if wait is None else ("data" if wait >= DATA_BOUND_WAIT else "training step")


def format_report(report: dict[str, Any]) -> str:
    """The report as a short table."""
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} img/s"

    lines = [f"where the time goes ({report.get('sampled_batches')} sampled batches of {report.get('batch_size')}, "
             f"{report.get('num_workers', '?')} workers, {report.get('cores')} cores)",
             f"  loader alone          {rate(report.get('loader_images_per_s'))}",
             f"  training step alone   {rate(report.get('step_images_per_s'))}",
             f"  together (the epoch)  {rate(report.get('together_images_per_s'))}"]
    if report.get("data_wait_share") is not None:
        lines.append(f"  data wait             {report['data_wait_share']:.0%} of the epoch")
    ceiling = report.get("decode_ceiling")
    if ceiling:
        lines.append(f"  JPEG decode ceiling   {rate(ceiling['images_per_s'])} ({ceiling['cores']} cores)"
                     if ceiling["storage"] == "jpeg" else "  JPEG decode ceiling   - (stored RAW: no decoding)")
    for op in report.get("ops") or []:
        lines.append(f"    {op['pipeline'] + ': ' + op['op']:<34s} {op['us_per_image']:>9,.1f} µs/image")
    if report.get("ops"):
        lines.append(f"    {'sum of the ops':<34s} {report['ops_us_per_image']:>9,.1f} µs/image "
                     f"(loader alone: {report['loader_us_per_image']:,.1f})")
    lines.append(f"  bottleneck: {report['bottleneck']}")
    lines += [f"  - {text}" for text in report["advice"]]
    if report.get("cost_share") is not None:
        lines.append(f"  (this report took {report['cost_s']:.2f} s, {report['cost_share']:.1%} of the epoch; "
                     f"logging.doctor false turns it off)")
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(run_dir) / DOCTOR_FILE
    write_json_atomic(path, report)
    return path


@param("logging.doctor")
def after_first_epoch(trainer: Any, doctor: bool) -> dict[str, Any] | None:
    """The report after a run's first epoch (`logging.doctor`) on torchstrap's FFCV loaders (not with
    `training.fast_dev_run`, nor after an epoch too short for the report to fit `COST_SHARE` of it): every rank measures (a distributed step needs them all), rank 0 writes
    doctor.json and prints the table. Its step measurement calls `train_step`, `backward` and `optimizer_step`
    a few more times on a copy of a batch, outside the loop's hook order; what they change is restored."""
    if not doctor or trainer.fast_dev_run or trainer.epoch != 0 or not is_seeded_loader(trainer.train_loader):
        return None
    if not fits_the_budget(len(trainer.train_loader)):
        if trainer.is_main:
            print(f"doctor: not run after this short first epoch ({len(trainer.train_loader)} batches: the report "
                  f"would cost more than {COST_SHARE:.0%} of it); `torchstrap doctor {trainer.run_dir}` measures "
                  f"on demand", flush=True)
        return None
    report = diagnose(trainer, trainer.epoch_record)
    report["epoch"] = trainer.epoch
    if trainer.is_main:
        write_report(trainer.run_dir, report)
        print(format_report(report), flush=True)
    return report


# ---------------------------------------------------------------------- on demand
DOCTOR_FLAG = "--doctor"


def split_doctor_flag(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without `--doctor`, whether it was given): a training command's `--doctor`."""
    found, rest = split_options(argv, flags=[DOCTOR_FLAG])
    return rest, bool(found[DOCTOR_FLAG])


def report_instead_of_training(trainer: Any) -> dict[str, Any]:
    """`--doctor` on a training command: measure (no epoch is trained), write doctor.json into the run folder,
    print the table; the trainer is closed."""
    try:
        report = diagnose(trainer, batches=SAMPLED_BATCHES[1])
        if trainer.is_main:
            write_report(trainer.run_dir, report)
            print(format_report(report), flush=True)
        return report
    finally:
        trainer.close()


def experiment_of(run_dir: Path, record: dict[str, Any]) -> tuple[Path, str]:
    """(experiment root, package) of a run folder: the generated experiment (`.copier-answers.yml`) above the
    run folder, or above the training command config.json recorded."""
    command = record.get("command") or [""]
    starts = [run_dir.resolve(), Path(str(command[0])).resolve(), Path.cwd()]
    for start in starts:
        for folder in (start, *start.parents):
            trains = sorted(folder.glob("src/*/train.py"))
            if (folder / ".copier-answers.yml").exists() and trains:
                return folder, trains[0].parent.name
    raise UserError(f"cannot find the experiment of run folder {run_dir}: no generated experiment (a folder with "
                    f".copier-answers.yml and src/<package>/train.py) above it or above its recorded command "
                    f"{command[0]!r}; run `torchstrap doctor` from the experiment's folder")


def remeasure(run_dir: str | os.PathLike, timeout: float = 3600) -> dict[str, Any]:
    """`torchstrap doctor RUN_DIR`: rebuild the run from its config.json in a fresh process (its experiment's
    `train --doctor`, in a scratch run folder) and write the report into RUN_DIR/doctor.json."""
    import json
    import subprocess
    import sys
    import tempfile

    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / CONFIG_FILE).read_text())
        config = record["config"]
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir / CONFIG_FILE} is not a run record (JSON with a 'config' mapping)") from None
    root, package = experiment_of(run_dir, record)
    with tempfile.TemporaryDirectory(prefix="torchstrap-doctor-") as scratch:
        recorded = Path(scratch) / "recorded.json"
        recorded.write_text(json.dumps(config, default=str))
        command = [sys.executable, "-m", f"{package}.train", DOCTOR_FLAG, "-C", str(recorded),
                   "--logging.folder", scratch, "--logging.run_id", "doctor", "--logging.backends", "[]",
                   "--logging.progress", "false"]
        runtime = str(Path(__file__).resolve().parents[1])  # this torchstrap_runtime, not another install
        paths = [str(root / "src"), runtime, *filter(None, [os.environ.get("PYTHONPATH")])]
        done = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
                              capture_output=True, text=True, timeout=timeout)
        measured = Path(scratch) / "doctor" / DOCTOR_FILE
        if done.returncode != 0 or not measured.exists():
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise UserError(f"rebuilding run {run_dir} from its {CONFIG_FILE} failed: {last}")
        report = json.loads(measured.read_text())
    report["remeasured_from"] = str(run_dir / CONFIG_FILE)
    write_report(run_dir, report)
    return report
