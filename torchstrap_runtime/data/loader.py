"""Loader: `ffcv.loader.Loader` with seeded ops, its own well-mixed order, exact resume and sharding.

What differs from FFCV's loader:
- `seed` fixes the order only; each seeded op has its own seed. A seed left None is drawn from OS
  entropy when the Loader is built (one per op object: the same op object in two pipelines shares
  its draws).
- the order of epoch e is a permutation drawn from `numpy.random.default_rng([seed, e])`
  (SeedSequence-mixed, so seeds s and s+1 do not share epochs).
- the compiled pipeline receives each seeded op's key for the epoch (see `rng.py`); a sample's
  augmentation therefore depends only on (op seed, epoch, dataset index).
- `start_epoch`, `start_batch`, `set_epoch(epoch, start_batch)` resume exactly inside an epoch.
- `order=QUASI_RANDOM` is our own seeded order (see `quasi_random_order`): the file's pages in a random order,
  samples shuffled within windows of pages, so a loader with `os_cache=False` holds only a window of pages
  in memory; it shards across ranks (FFCV's refuses to).
- `distributed=True` splits each epoch's order into per-rank shards order[rank::world_size] (QUASI_RANDOM:
  contiguous blocks, so each rank reads its own pages), padded like FFCV's when `drop_last=False`
  (`distributed.drop_padding` keeps padding out of evaluation sums).
- `custom_field_mapper={'view2': 'image'}` decodes a stored field again under another output name.
- the batch buffers are allocated once and reused by the following epochs (FFCV allocates, and the
  kernel zero-fills, them again every epoch); an epoch starts in the slot after the previous epoch's last
  batch, so a batch stays valid for as many further batches as inside an epoch.
"""
import itertools
import linecache
import types
from contextlib import nullcontext
from pathlib import Path
from queue import Full
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numba
import numpy as np
import torch
from ffcv.loader.epoch_iterator import IS_CUDA, EpochIterator, select_buffer
from ffcv.loader.loader import DEFAULT_OS_CACHE, Loader as FFCVLoader, OrderOption
from ffcv.memory_managers import OSCacheManager
from ffcv.pipeline import PipelineSpec
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.graph import DecoderNode, Graph, RefNode, TransformNode

from .base import Seeded, check_seed
from .rng import fresh_seed, op_key_py
from .writers import check_beton

Stage = Tuple[Callable, List[int]]
PARALLEL_CHUNKSIZE = 1  # samples per scheduling step of the ops' parallel loops (docs/performance.md)
STAGE_COUNTER = itertools.count()


class Loader(FFCVLoader):
    """FFCV loader with reproducible, per-op-seeded augmentations.

    Takes every argument of `ffcv.loader.Loader` with FFCV's defaults (`order=OrderOption.SEQUENTIAL`;
    numpy integers work for `batch_size` and `seed`; `filter()` works), plus:

    Args:
        custom_field_mapper: {output name: stored field}; `pipelines[output name]` then decodes that field
            again (e.g. a second augmented view of 'image'). Extra outputs come after the stored fields.
        start_epoch: epoch of the first `__iter__` (later ones count up).
        start_batch: batch at which the first `__iter__` starts (0 = the full epoch).
        rank, world_size: shard explicitly; with `distributed=True` they default to torch.distributed's.
        quasi_random_window: with `order=QUASI_RANDOM`, how many of the file's pages are mixed together
            (default `2 * batch_size`, FFCV's buffer); with `os_cache=False` a rank holds about this many pages.

    Differences from FFCV's Loader that stay on purpose:
        - `seed` drives the order only (ops have their own seeds), and RANDOM's permutation of epoch e is
          `default_rng([seed, e])`, not FFCV's `default_rng(seed + e)`: same seed, different shuffle.
        - distributed RANDOM order with `seed=None` draws rank 0's seed and broadcasts it (FFCV uses 0);
          sharding comes from our own order, not torch's DistributedSampler (same shard sizes, other samples).
        - distributed with `drop_last=True`: each rank takes `N // world_size` samples and drops its last
          partial batch (FFCV pads to `ceil(N / world_size)` first, repeating samples in training).
        - `order=QUASI_RANDOM` is ours, not FFCV's `QuasiRandom`: seeded by (seed, epoch) like RANDOM, any seed,
          sharded across ranks (FFCV raises NotImplementedError), mixing windows of `quasi_random_window` pages
          (FFCV: a sliding buffer of `2 * batch_size` pages), and files without page data (labels only) work too.
        - a custom `TraversalOrder` class for `order` is refused (resume and sharding need our order).
        - `filter()` keeps the loader's resolved order seed (ops whose seed is None draw anew, as in any new
          Loader); the condition sees each sample of the field as its pipeline outputs it (like FFCV), and the
          selection is by dataset index even when `indices` was given (FFCV's is by position).
    """

    def __init__(self, fname: Union[str, Path], batch_size: int, num_workers: int = -1,
                 os_cache: bool = DEFAULT_OS_CACHE, order: OrderOption = OrderOption.SEQUENTIAL,
                 distributed: bool = False, seed: Optional[int] = None, indices: Optional[Sequence[int]] = None,
                 pipelines: Optional[Mapping[str, Union[Sequence, PipelineSpec, None]]] = None,
                 custom_fields: Optional[Mapping] = None, drop_last: bool = True, batches_ahead: int = 3,
                 recompile: bool = False, custom_field_mapper: Optional[Mapping[str, str]] = None,
                 start_epoch: int = 0, start_batch: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, quasi_random_window: Optional[int] = None):
        # what filter() builds its loaders from
        self._args = dict(fname=fname, batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
                          order=order, distributed=distributed, seed=seed, indices=indices, pipelines=pipelines,
                          custom_fields=custom_fields, drop_last=drop_last, batches_ahead=batches_ahead,
                          recompile=recompile, custom_field_mapper=custom_field_mapper, rank=rank,
                          world_size=world_size, quasi_random_window=quasi_random_window)
        fname = str(check_beton(fname, custom_fields or {}))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"Loader: batch_size must be an int >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        if order not in (OrderOption.RANDOM, OrderOption.SEQUENTIAL, OrderOption.QUASI_RANDOM):
            raise ValueError(f"Loader: order must be an OrderOption, got {order!r}")
        self.rank, self.world_size = resolve_shard(distributed, rank, world_size)
        self.order_option = order
        if quasi_random_window is None:
            quasi_random_window = 2 * batch_size
        if isinstance(quasi_random_window, bool) or not isinstance(quasi_random_window, (int, np.integer)) \
                or quasi_random_window < 1:
            raise ValueError(f"Loader: quasi_random_window must be an int >= 1 (pages), got {quasi_random_window!r}")
        self.quasi_random_window = int(quasi_random_window)
        self.sample_pages: Optional[np.ndarray] = None  # QUASI_RANDOM: page of each sample, read once
        seed = check_seed(seed, "Loader")
        seed = resolve_order_seed(seed, self.world_size, distributed, shuffled=order is not OrderOption.SEQUENTIAL)
        self._args["seed"] = seed
        pipelines = map_custom_fields(fname, pipelines or {}, custom_field_mapper or {}, custom_fields or {})

        super().__init__(fname, batch_size, num_workers=num_workers, os_cache=os_cache, order=OrderOption.SEQUENTIAL,
                         distributed=False, seed=seed, indices=indices, pipelines=pipelines,
                         custom_fields=custom_fields or {}, drop_last=drop_last, batches_ahead=batches_ahead,
                         recompile=recompile)
        self.op_seeds: Dict[int, int] = {id(op): (op.seed if op.seed is not None else fresh_seed())
                                         for op in self._seeded_ops().values()}
        self.epoch: Optional[int] = None  # epoch of the latest __iter__
        self.set_epoch(start_epoch, start_batch)
        self.buffers: Optional[tuple] = None  # ((batch_size, slots), allocations) kept across epochs
        self.next_slot = 0  # memory slot of the next batch
        self.last_iterator: Optional["SeededEpochIterator"] = None
        self.graph.allocate_memory = self.allocate_memory  # called by each new epoch iterator

    def allocate_memory(self, batch_size: int, batch_slots: int) -> dict:
        """The graph's batch buffers, allocated again only when no finished epoch left reusable ones (same batch
        size, slots and buffer shapes: a decoder's `output_size` may change between epochs)."""
        previous = self.last_iterator
        layout = (batch_size, batch_slots, repr(self.graph.collect_requirements()[0]))
        if (self.buffers is not None and self.buffers[0] == layout
                and (previous is None or not previous.is_alive())):
            if IS_CUDA:
                torch.cuda.synchronize()  # copies of the previous epoch's last batches are done
            return self.buffers[1]
        allocations = Graph.allocate_memory(self.graph, batch_size, batch_slots)
        self.buffers = (layout, allocations)
        return allocations

    # ------------------------------------------------------------------ order, length, epochs
    def samples_per_epoch(self) -> int:
        """How many samples this rank yields in a full epoch (padding included, see `real_samples`)."""
        total = len(self.indices)
        if self.drop_last:
            return (total // self.world_size) // self.batch_size * self.batch_size
        return -(-total // self.world_size)

    def real_samples(self, batch: int) -> int:
        """How many leading samples of batch `batch` of an epoch are not padding.

        With `world_size > 1` and `drop_last=False`, the epoch's order is padded like FFCV's (its first samples
        repeated at the end) so every rank runs the same number of batches; the padding is the tail of a rank's
        last batch. Evaluation sums count `batch[:real_samples(b)]` so each sample counts exactly once.
        """
        size = min(self.batch_size, self.samples_per_epoch() - batch * self.batch_size)
        if self.drop_last:
            return max(0, size)
        total = len(self.indices)
        if self.order_option is OrderOption.QUASI_RANDOM:  # contiguous shards: the padding is at the end
            real = min(self.samples_per_epoch(), max(0, total - self.rank * self.samples_per_epoch()))
        else:
            real = len(range(self.rank, total, self.world_size))
        return max(0, min(size, real - batch * self.batch_size))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset indices this rank visits in `epoch`, in order (before batching and `start_batch`)."""
        if self.order_option is OrderOption.RANDOM:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.indices)
        elif self.order_option is OrderOption.QUASI_RANDOM:
            if self.sample_pages is None:
                self.sample_pages = sample_pages(self.reader, self.batch_size)
            order = quasi_random_order(self.indices, self.sample_pages, self.seed, epoch, self.quasi_random_window)
        else:
            order = np.asarray(self.indices)
        if not self.drop_last and self.world_size > 1:  # like DistributedSampler: repeat the start
            order = np.resize(order, -(-len(order) // self.world_size) * self.world_size)
        if self.order_option is OrderOption.QUASI_RANDOM:  # a contiguous block: this rank reads its own pages
            share = len(order) // self.world_size
            return order[self.rank * share:(self.rank + 1) * share][:self.samples_per_epoch()]
        return order[self.rank::self.world_size][:self.samples_per_epoch()]

    def next_traversal_order(self) -> np.ndarray:
        return self.epoch_order(self.next_epoch)

    def __len__(self) -> int:
        """Batches in a full epoch (regardless of start_batch)."""
        return -(-self.samples_per_epoch() // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next `__iter__` yield epoch `epoch` from batch `start_batch` on."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"Loader: epoch must be an int >= 0, got {epoch!r}")
        if isinstance(start_batch, bool) or not isinstance(start_batch, (int, np.integer)) \
                or not 0 <= start_batch <= len(self):
            raise ValueError(f"Loader: start_batch must be an int in [0, {len(self)}], got {start_batch!r}")
        self.next_epoch, self.next_start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> "SeededEpochIterator":
        Compiler.set_num_threads(self.num_workers)
        epoch, start = self.next_epoch, self.next_start_batch
        order = self.epoch_order(epoch)[start * self.batch_size:]
        self.epoch = epoch
        self.next_epoch, self.next_start_batch = epoch + 1, 0
        if self.code is None or self.recompile:
            self.generate_code()
        self.last_iterator = SeededEpochIterator(self, order, self.rng_keys(epoch), self.op_params(), start)
        return self.last_iterator

    # ------------------------------------------------------------------ seeds
    def _seeded_ops(self) -> Dict[int, Seeded]:
        """Seeded op of each graph node, by node id."""
        ops = {}
        for node in self.graph.nodes:
            op = node.decoder if isinstance(node, DecoderNode) else getattr(node, "operation", None)
            if isinstance(op, Seeded):
                ops[node.id] = op
        return ops

    def rng_keys(self, epoch: int) -> Dict[int, np.uint64]:
        """Key of every seeded node for `epoch` (what the compiled pipeline receives)."""
        return {node_id: np.uint64(op_key_py(self.op_seeds[id(op)], op.stream, epoch))
                for node_id, op in self._seeded_ops().items()}

    def op_params(self) -> Dict[int, np.ndarray]:
        """Parameters of every seeded node, as its compiled function receives them."""
        return {node_id: op.params() for node_id, op in self._seeded_ops().items()}

    @property
    def augmentation_seeds(self) -> Dict[str, List[Tuple[str, int]]]:
        """{output name: [(op class, resolved seed), ...]}: log it to rebuild a seed=None run."""
        seeds = {}
        for name, spec in self.pipeline_specs.items():
            ops = [spec.decoder, *spec.transforms]
            seeds[name] = [(type(op).__name__, self.op_seeds[id(op)]) for op in ops if isinstance(op, Seeded)]
        return seeds

    def seed_state(self) -> Dict[str, object]:
        """The resolved order seed and op seeds (in pipeline order), for a checkpoint: `load_seed_state` on a
        loader built with the same pipelines replays a run whose seeds were None (exact resume)."""
        ops = [self._seeded_ops()[node_id] for node_id in sorted(self._seeded_ops())]
        return {"order": None if self.seed is None else int(self.seed),
                "ops": [[type(op).__name__, int(self.op_seeds[id(op)])] for op in ops]}

    def load_seed_state(self, state: Mapping) -> None:
        """Adopt the seeds of `seed_state()`; pipelines that differ from the checkpoint's are an error."""
        ops = [self._seeded_ops()[node_id] for node_id in sorted(self._seeded_ops())]
        names = [type(op).__name__ for op in ops]
        saved = [name for name, _ in state["ops"]]
        if names != saved:
            raise ValueError(f"Loader.load_seed_state: the checkpoint's seeded ops {saved} differ from this"
                             f" loader's {names}; were the pipelines changed since the checkpoint?")
        for op, (_, seed) in zip(ops, state["ops"]):
            self.op_seeds[id(op)] = int(seed)
        self.seed = state["order"]

    # ------------------------------------------------------------------ code generation
    def generate_code(self) -> None:
        for node in self.graph.nodes:  # decoders with a cached kernel for memory-mapped files
            if isinstance(node, DecoderNode) and hasattr(node.decoder, "os_cache"):
                node.decoder.os_cache = isinstance(self.memory_manager, OSCacheManager)
        _, code = self.graph.collect_requirements()
        self.code = build_stages(self.graph, code)

    def filter(self, field_name: str, condition: Callable[[object], bool]) -> "Loader":
        """A new Loader over the samples whose `field_name` output (this loader's pipeline for it, or the
        default one) satisfies `condition`, with this loader's other arguments and resolved order seed."""
        fields = list(self.reader.handlers)
        if field_name not in fields:
            raise ValueError(f"Loader.filter: {field_name!r} is not a stored field of {self.fname} (fields: {fields})")
        pipelines = {name: None for name in fields}
        original = self._args["pipelines"] or {}
        if field_name in original:
            pipelines[field_name] = original[field_name]
        else:
            del pipelines[field_name]  # its default pipeline
        scan = Loader(**{**self._args, "pipelines": pipelines, "custom_field_mapper": None,
                         "order": OrderOption.SEQUENTIAL, "drop_last": False, "distributed": False,
                         "rank": None, "world_size": None})
        selected, position = [], 0
        for (values,) in scan:
            for value in values:
                if condition(value):
                    selected.append(scan.indices[position])
                position += 1
        return Loader(**{**self._args, "indices": np.array(selected, dtype=np.uint64)})


class SeededEpochIterator(EpochIterator):
    """FFCV's epoch iterator that also hands the seeded ops their epoch keys."""

    def __init__(self, loader: Loader, order: np.ndarray, rng_keys: Dict[int, np.uint64],
                 op_params: Dict[int, np.ndarray], start_batch: int = 0, code: Optional[tuple] = None):
        self.rng_keys, self.op_params = rng_keys, op_params  # before super().__init__ starts the thread
        self.code = code or loader.code  # (stages, output node ids) this iterator runs
        self.first_slot = loader.next_slot
        self.batch: Optional[int] = None  # epoch batch number of the batch __next__ returned last
        self.next_batch = start_batch
        super().__init__(loader, order)

    def run(self):
        """FFCV's producer loop; an error is handed to the consumer instead of killing the thread silently.

        The ops' parallel loops hand out samples one at a time (numba's default splits a batch into equal
        shares up front, and one worker then waits for the other whenever its share decodes slower).
        """
        try:
            numba.set_parallel_chunksize(PARALLEL_CHUNKSIZE)  # this thread's parallel loops
            super().run()
        except BaseException as error:  # noqa: BLE001 - re-raised in __next__
            while not self.terminate_event.is_set():
                try:
                    self.output_queue.put(PipelineFailure(error), timeout=0.5)
                    return
                except Full:
                    pass

    def __next__(self):
        result = self.output_queue.get()
        if isinstance(result, PipelineFailure):
            self.close()
            raise RuntimeError(f"data pipeline failed: {type(result.error).__name__}: {result.error}") from result.error
        if result is None:
            self.close()
            raise StopIteration
        slot, batch = result
        self.batch, self.next_batch = self.next_batch, self.next_batch + 1
        if IS_CUDA:
            self.current_stream.wait_stream(self.cuda_streams[slot])
        return batch

    def run_pipeline(self, b_ix, batch_indices, batch_slot, cuda_event):
        self.memory_context.start_batch(b_ix)
        slots = self.loader.batches_ahead + 2
        memory_slot = (self.first_slot + b_ix) % slots  # FFCV's batch_slot still picks the CUDA stream
        self.loader.next_slot = (memory_slot + 1) % slots
        stream = torch.cuda.stream(self.cuda_streams[batch_slot]) if IS_CUDA else nullcontext()
        stages, outputs = self.code
        with stream:
            if IS_CUDA and cuda_event:
                cuda_event.wait()
            args = {"batch_indices": batch_indices, "storage_state": self.storage_state,
                    "metadata": self.metadata, "rng_keys": self.rng_keys, "op_params": self.op_params}
            count = len(batch_indices)
            for node_id, buffer in self.memory_allocations["operation"].items():
                args[f"memory_{node_id}"] = select_buffer(buffer, memory_slot, count)
            for node_id, buffer in self.memory_allocations["shared"].items():
                args[f"shared_memory_{node_id}"] = select_buffer(buffer, memory_slot, count)
            for stage, defined in stages:
                for node_id, value in zip(defined, stage(**args)):
                    args[f"result_{node_id}"] = value
            return tuple(args[f"result_{node_id}"] for node_id in outputs)


# ---------------------------------------------------------------------- helpers
class PipelineFailure:
    """An exception raised in the producer thread, on its way to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def resolve_shard(distributed: bool, rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when not sharding."""
    if rank is None and world_size is None:
        if not distributed:
            return 0, 1
        if not torch.distributed.is_available() or not torch.distributed.is_initialized():
            raise ValueError("Loader: distributed=True needs an initialised torch.distributed process group "
                             "(or explicit rank= and world_size=)")
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if rank is None or world_size is None:
        raise ValueError(f"Loader: pass both rank and world_size, got rank={rank!r}, world_size={world_size!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"Loader: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return rank, world_size


def sample_pages(reader, block: int) -> np.ndarray:
    """Page of the file holding each sample's first stored byte (int64, one per sample).

    Samples with nothing stored in pages (fields kept in the metadata only, like labels) get made-up pages
    of `block` consecutive samples each, after the file's last page.
    """
    table = reader.alloc_table
    first = np.full(reader.num_samples, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(first, table["sample_id"].astype(np.int64), table["ptr"].astype(np.uint64))
    stored = first != np.iinfo(np.uint64).max
    pages = np.empty(reader.num_samples, dtype=np.int64)
    pages[stored] = (first[stored] // np.uint64(reader.page_size)).astype(np.int64)
    after = int(pages[stored].max()) + 1 if stored.any() else 0
    pages[~stored] = after + np.flatnonzero(~stored) // block
    return pages


def quasi_random_order(indices: Sequence[int], pages: np.ndarray, seed: int, epoch: int, window: int) -> np.ndarray:
    """`indices` in the quasi-random order of `epoch`: the pages they sit on in a random order, cut into windows
    of `window` consecutive pages, the samples of each window shuffled together (`default_rng([seed, epoch])`).

    Reading the order front to back touches one window of pages at a time, so a loader with `os_cache=False`
    holds about `window` pages in memory (a random permutation needs every page for the whole epoch).
    """
    indices = np.asarray(indices)
    rng = np.random.default_rng([seed, epoch])
    visited, page_of_sample = np.unique(pages[indices.astype(np.int64)], return_inverse=True)
    page_rank = rng.permutation(len(visited))  # position of each page in the epoch's visit order
    window_of_sample = page_rank[page_of_sample.ravel()] // window
    return indices[np.lexsort((rng.random(len(indices)), window_of_sample))]


def resolve_order_seed(seed: Optional[int], world_size: int, distributed: bool, shuffled: bool = True) -> int:
    """The order seed; ranks must agree on a shuffled order, so None is broadcast from rank 0 under torch.distributed."""
    if seed is not None:
        return seed
    seed = fresh_seed()
    if world_size == 1 or not shuffled:
        return seed
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        from ..distributed import broadcast_object

        return broadcast_object(seed)
    raise ValueError("Loader: sharding without torch.distributed needs an explicit order seed "
                     "(ranks must agree on the order)")


def map_custom_fields(fname: str, pipelines: Mapping, mapper: Mapping[str, str],
                      custom_fields: Mapping) -> Dict[str, Union[list, PipelineSpec, None]]:
    """Copy the pipelines (FFCV pops decoders out of the lists it gets) and point mapped outputs at their field."""
    from ffcv.reader import Reader

    result = {name: (list(spec) if isinstance(spec, (list, tuple)) else spec) for name, spec in pipelines.items()}
    if not mapper:
        return result
    fields = Reader(fname, custom_fields).field_names
    for output, field in mapper.items():
        if field not in fields:
            raise ValueError(f"Loader: custom_field_mapper[{output!r}] = {field!r} is not a field of {fname} "
                             f"(fields: {fields})")
        if output in fields:
            raise ValueError(f"Loader: custom_field_mapper output {output!r} is already a stored field of {fname}")
        if not isinstance(result.get(output), list):
            raise ValueError(f"Loader: custom_field_mapper maps {output!r} to {field!r}, so pipelines[{output!r}] "
                             f"must be a list of ops, got {result.get(output)!r}")
        result[output] = PipelineSpec(field, transforms=result[output])
    return result


COMPILED: Dict[tuple, Callable] = {}  # process-wide: op functions with equal code and closure compile once
COMPILED_MAX = 256  # oldest entries are dropped beyond this (closures over per-loader objects never hit again)


def compile_op(fn: Callable) -> Callable:
    """numba-compile one op's function like FFCV does, into NUMBA_CACHE_DIR when it can be cached.

    Already-compiled kernels (our ops') are used as they are. Others are compiled once per process for
    each (code, closure values): FFCV builds a fresh closure for every loader, and numba would compile
    each again (seconds apiece). Those whose closure holds only plain values (`cacheable_closure`: FFCV's
    IntDecoder, NormalizeImage, ...) are compiled with `cache=True`, so a later process loads them.
    """
    from numba import njit
    from numba.core.dispatcher import Dispatcher

    if isinstance(fn, Dispatcher) or not Compiler.is_enabled:
        return fn
    parallel = getattr(fn, "is_parallel", False) and Compiler.num_threads > 1
    try:
        key = (fn.__code__, parallel, tuple((type(c.cell_contents), c.cell_contents) for c in fn.__closure__ or ()))
        hash(key)
    except (TypeError, ValueError):  # unhashable closure value (an array): compile this one on its own
        key = None
    if key is not None and key in COMPILED:
        return COMPILED[key]
    cache = cacheable_closure(fn)
    if cache and parallel:  # numba's cache index ignores the options: the parallel build gets its own name
        fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        fn.__qualname__ += "_parallel"
    compiled = njit(fastmath=True, nogil=True, error_model="numpy", parallel=parallel, cache=cache)(fn)
    if key is not None:
        COMPILED[key] = compiled
        while len(COMPILED) > COMPILED_MAX:
            del COMPILED[next(iter(COMPILED))]
    return compiled


CACHEABLE_ARRAY_BYTES = 1 << 16  # arrays up to this size are baked into the machine code (numba's constants)


def cacheable_closure(fn: Callable) -> bool:
    """Whether numba can cache `fn` under a key that is the same in every process: its closure holds only
    numbers, strings, small numeric arrays, tuples of these, and numba's `prange` or `range` (FFCV's loops).
    Compiled functions or objects in the closure pickle differently per process: those compile uncached."""
    import numba

    def plain(value) -> bool:
        if isinstance(value, (bool, int, float, str, bytes, np.generic, type(None))):
            return True
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "biuf" and value.nbytes <= CACHEABLE_ARRAY_BYTES
        if isinstance(value, tuple):
            return all(plain(v) for v in value)
        return value is numba.prange or value is range

    try:
        return all(plain(cell.cell_contents) for cell in fn.__closure__ or ())
    except ValueError:  # an empty cell
        return False


def node_call(node, code: dict, shared_owner: dict) -> Tuple[List[str], str]:
    """Source lines that run one node, and the name of its result."""
    if isinstance(node, RefNode):
        return [], node.result_id
    i = node.id
    op = node.decoder if isinstance(node, DecoderNode) else node.operation
    lines, args = [], [node.arg_id, f"memory_{i}"]
    if node.with_indices and not isinstance(op, Seeded):
        args.append("batch_indices")
    if isinstance(node, DecoderNode):
        args += [f"metadata['f{node.f_ix}']", "storage_state"]
    if isinstance(op, Seeded):
        if isinstance(node, TransformNode):
            args.append("batch_indices")
        args += [f"rng_keys[{i}]", f"op_params[{i}]"]
    if code["shared"].get(i) is not None:
        if op not in shared_owner:
            shared_owner[op] = i
            lines.append(f"init_shared_state_code_{i}(shared_memory_{i})")
        args.append(f"shared_memory_{shared_owner[op]}")
    lines.append(f"{node.result_id} = code_{i}({', '.join(args)})")
    return lines, node.result_id


def build_stage(graph: Graph, stage: List[int], jitted: bool, code: dict, defined: List[int],
                shared_owner: dict) -> Stage:
    """One pipeline stage as a Python function calling the (numba-compiled when `jitted`) op functions."""
    params = ["batch_indices", "metadata", "storage_state", "rng_keys", "op_params"]
    params += [f"memory_{i}" for i in code["operation"]] + [f"shared_memory_{i}" for i in code["shared"]]
    params += [f"result_{i}" for i in defined]
    body, results, namespace = [], [], {}
    for node_id in stage:
        node = graph.id_to_node[node_id]
        op = node.decoder if isinstance(node, DecoderNode) else getattr(node, "operation", None)
        if isinstance(op, Seeded):  # its seeded function (`generate_code` is stock FFCV's unseeded adapter)
            namespace[f"code_{node_id}"] = op.seeded_code()
        elif node_id in code["operation"]:
            namespace[f"code_{node_id}"] = code["operation"][node_id]
        if code["shared"].get(node_id) is not None:
            namespace[f"init_shared_state_code_{node_id}"] = code["shared"][node_id]
        lines, result = node_call(node, code, shared_owner)
        body += lines
        results.append(result)
    if jitted:
        namespace = {name: compile_op(fn) for name, fn in namespace.items()}
    source = f"def stage({', '.join(params)}):\n"
    source += "".join(f"    {line}\n" for line in body)
    source += f"    return ({''.join(r + ', ' for r in results)})\n"
    filename = f"<torchstrap pipeline stage {next(STAGE_COUNTER)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # readable tracebacks
    exec(compile(source, filename, "exec"), namespace)
    defined += stage
    return namespace["stage"], list(stage)


def build_stages(graph: Graph, code: dict) -> Tuple[List[Stage], List[int]]:
    """All stages (alternately numba-compiled and plain Python, as FFCV groups them) and the output node ids."""
    stages, defined, shared_owner = [], [], {}
    for s_ix, stage in enumerate(graph.group_operations()):
        stages.append(build_stage(graph, stage, s_ix % 2 == 0, code, defined, shared_owner))
    return stages, [node.id for node in graph.leaf_nodes.values()]
