"""The input pipeline: a dataset by name, string-named preprocessing, host-local numpy batches.

  it = make_iterator("tfds:imagenet2012:train", batch_size=1024, seed=0,
                     preprocess="decode|inception_crop(224)|flip_lr|value_range(-1, 1)",
                     batch_preprocess="mixup_cutmix(num_classes=1000)", num_threads=16)
  batch = next(it)          # {"image": (B / process_count, 224, 224, 3) float32, "label": ...}
  state = it.get_state()    # {"epoch": e, "position": p}: JSON, goes into the checkpoint
  it.set_state(state)       # the same batches follow, bit for bit

Determinism: epoch e visits the examples in the order permutation(seed, e) (or in order without
shuffle; a source may define its own epoch_order(seed, e), as the embedded datasets do); example i
of epoch e is preprocessed with np.random.default_rng((seed, e, i)) and batch
k's batch ops with default_rng((seed, k, process_index)). So batch k is a pure function of
(seed, k) and restoring needs only (epoch, position): no worker state, no buffers.

Repeated augmentation (repeated_augmentation=r >= 2; DeiT's RASampler, timm's RepeatAugSampler):
each example of the epoch's permutation is repeated r times in a row ([p0, p0, p0, p1, ...]), process
p of P takes every P-th of these from p (so the copies of one example spread over the processes),
and each process keeps its first floor(N // 256 * 256 / P) (ceil(N / P) when N < 256): an epoch
stays about N examples long, 1/r of the dataset seen r times. This is timm's index arithmetic
exactly (repeated_augmentation_order); copy j of the repeated list is preprocessed with
default_rng((seed, e, i, j)), so the repeats get different random draws and batch k stays a pure
function of (seed, k).

Multi-host: with process_count P, batch_size is the global batch; process p gets the p-th
contiguous slice of each global batch (B / P examples), ready for
jax.make_array_from_process_local_data.

Threads: batches are built by `num_threads` worker threads through grain
(MapDataset.range(...).map(load_batch).to_iter_dataset with ReadOptions), in order, with
`prefetch` batches buffered (without grain installed, a plain thread pool does the same).
Decoding and resizing run in PIL, which releases the GIL, but the threads stop scaling at 4-8
(BENCHMARKS.md: 1.1k JPEG img/s on 16 cores). Processes: with `num_workers` > 0, whole batches
are built by that many worker processes instead (spawned, each with a copy of the iterator; same
batches, same order). A worker writes its batch into a shared-memory block that the main process
copies out and frees: sending a 224 px batch of 256 (38.5 MB of uint8) through the pool's pipe capped
the input at ~2k images/s on a 16-core GPU host. Ending the preprocess in uint8 (no value_range)
moves 4x fewer bytes; the trainer reads uint8 images as 0..255 on the device
(tokax.train.model.normalize_images).

Worker processes die with the process that made them, also when it is killed (SIGKILL): on Linux the
kernel signals them (prctl PR_SET_PDEATHSIG), elsewhere (or for a pool started off the main thread) a
thread in each worker watches its parent pid; Python's resource tracker then ends too.

Bad images: a file that does not decode fails with its path (transforms.BadImageError). With
skip_bad_images=True (the folder source's data.skip_bad_images) a bad example is replaced by the next
good one of the epoch's order (the same for the same (seed, step), so restores stay exact), or, in a
padded eval pass, masked out; DataIterator.bad_examples counts them.

Names: "tfds:<name>[:split]" (tokax.data.tfds), "folder:<root>" (tokax.data.folder; root/<split>
if that directory exists, the class list of root/train for every split), or an embedded dataset
"digits" / "cluttered_digits" (also as "offline:<name>"; images float32 in [0, 1]).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from absl import logging

from tokax.data import embedded, glyphs, offline, transforms

_EXAMPLE_SALT = 0x54524E53
_BATCH_SALT = 0x4D495842
_ORDER_SALT = 0x4F524452
_BAD_KEY = "__bad_examples__"  # a batch's replaced-example count, from load_batch to __next__ (never returned)


class Source(Protocol):
  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class ArraySource:
  """An offline.ArrayDataset as a Source: [i] -> {"image": (H, W, 3) float32 in [0, 1], "label": int32}.

  Its shuffled epochs visit the examples in offline.epoch_permutation order (epoch_order), the order
  offline.iterate_batches and the trainers' offline runs have always used, so offline runs keep
  their batches bit for bit through the pipeline.
  """

  def __init__(self, dataset: offline.ArrayDataset):
    self.dataset = dataset
    self.num_classes = dataset.num_classes

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.dataset.images[index], "label": self.dataset.labels[index]}

  def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
    """(N,) the order of shuffled epoch `epoch`: offline.epoch_permutation(N, seed, epoch)."""
    return offline.epoch_permutation(len(self.dataset), seed, epoch)


def get_source(name: str, split: str = "train", *, data_dir: str | None = None,
               classes: Sequence[str] | None = None, skip_bad_images: bool = False, **offline_kwargs: Any) -> Source:
  """A Source by name (see the module docstring); offline_kwargs go to offline.load (image_size, ...).

  classes, skip_bad_images: folder datasets only (tokax.data.folder.ImageFolder). Without `classes`, a
  folder split other than train takes root/train's class list where root/train exists.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"data.name: expected 'tfds:<name>[:split]', 'folder:<root>' or one of {embedded.DATASETS}; "
                     f"got {name!r}")
  if not name.startswith("folder:"):
    for field, value in (("classes", classes), ("skip_bad_images", skip_bad_images)):
      if value:
        raise ValueError(f"data.{field}: applies to image folders ('folder:<root>'), whose files the pipeline "
                         f"decodes and labels by folder name; {name!r} has its own labels and decoded images")
  if name.startswith("tfds:"):
    from tokax.data import tfds  # noqa: PLC0415 (tensorflow-datasets is optional)

    return tfds.data_source(name, split, data_dir=data_dir)
  if name.startswith("folder:"):
    from tokax.data import folder  # noqa: PLC0415

    root = name[len("folder:"):]
    split_root = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) else root
    train_root = os.path.join(root, "train")
    if classes is None and split_root not in (root, train_root) and os.path.isdir(train_root):
      classes = folder.class_folders(train_root)  # one class list per dataset: train's
    return folder.ImageFolder(split_root, classes=classes, skip_bad_images=skip_bad_images)
  if embedded.check_name(name) == "glyphs":  # rendered on access, uint8 (tokax.data.glyphs)
    return glyphs.source(name.removeprefix("offline:"), split, **offline_kwargs)
  return ArraySource(embedded.load(name, split, **offline_kwargs))


class DataIterator(Iterator[dict[str, np.ndarray]]):
  """Host-local batches of a Source, restorable from {"epoch", "position"}; see the module docstring.

  Attributes:
    steps_per_epoch: global batches per epoch (the last partial one dropped, or padded and
      masked without drop_remainder).
    skip_bad_images: replace (or, padded, mask out) examples whose image does not decode; None in the
      constructor: the source's own skip_bad_images (a folder's data.skip_bad_images), else False.
    bad_examples: how many examples of the batches returned so far were replaced or masked out.
    repeated_augmentation: copies of each example per epoch (timm's RepeatAugSampler, see the module
      docstring; 0 or 1: off); a training option (needs drop_remainder), it shortens steps_per_epoch to
      the selected examples.
  """

  def __init__(self, source: Source, *, batch_size: int, preprocess: str | Sequence[str] = "",
               batch_preprocess: str | Sequence[str] = "", seed: int = 0, shuffle: bool = True,
               drop_remainder: bool = True, num_epochs: int | None = None, process_index: int = 0,
               process_count: int = 1, num_threads: int = 8, prefetch: int | None = None,
               keys: tuple[str, ...] = ("image", "label"), num_workers: int = 0,
               skip_bad_images: bool | None = None, repeated_augmentation: int = 0):
    for field, value, minimum in (("batch_size", batch_size, 1), ("seed", seed, 0), ("num_threads", num_threads, 1),
                                  ("num_workers", num_workers, 0), ("repeated_augmentation", repeated_augmentation, 0),
                                  ("process_count", process_count, 1), ("process_index", process_index, 0)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DataIterator.{field}: expected an int >= {minimum}; got {value!r}")
    if process_index >= process_count:
      raise ValueError(f"DataIterator.process_index: {process_index} >= process_count {process_count}")
    if batch_size % process_count:
      raise ValueError(f"DataIterator.batch_size: the global batch {batch_size} must divide evenly over "
                       f"{process_count} processes")
    if num_epochs is not None and (isinstance(num_epochs, bool) or num_epochs < 1):
      raise ValueError(f"DataIterator.num_epochs: expected a positive int or None (forever); got {num_epochs!r}")
    n = len(source)
    self.repeated_augmentation = int(repeated_augmentation) if repeated_augmentation > 1 else 0
    if self.repeated_augmentation and not drop_remainder:
      raise ValueError("DataIterator.repeated_augmentation: a training order (it repeats examples); use it with "
                       "drop_remainder=True, never for an evaluation pass")
    epoch_size = n
    if self.repeated_augmentation:
      epoch_size = process_count * repeated_augmentation_selected(n, self.repeated_augmentation, process_count)
    if drop_remainder and batch_size > epoch_size:
      raise ValueError(f"DataIterator.batch_size: {batch_size} > epoch size {epoch_size} (dataset size {n}) with "
                       "drop_remainder=True yields nothing; lower batch_size or set drop_remainder=False")
    self.source, self.keys = source, tuple(keys)
    self.batch_size, self.local_batch_size = batch_size, batch_size // process_count
    self.seed, self.shuffle, self.drop_remainder, self.num_epochs = seed, shuffle, drop_remainder, num_epochs
    self.process_index, self.process_count = process_index, process_count
    self.num_threads, self.num_workers = num_threads, num_workers
    if skip_bad_images is None:
      skip_bad_images = getattr(source, "skip_bad_images", False)
    self.skip_bad_images, self.bad_examples = bool(skip_bad_images), 0
    self.prefetch = prefetch if prefetch is not None else 2 * max(num_threads, num_workers)
    self._specs = (preprocess, batch_preprocess)  # worker processes rebuild the ops from these
    self.preprocess = transforms.parse(preprocess)
    self.batch_preprocess = transforms.parse_batch(batch_preprocess)
    self.steps_per_epoch = epoch_size // batch_size if drop_remainder else -(-n // batch_size)
    self._orders: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    self._lock = threading.Lock()
    self._next_step = 0
    self._stream = None

  def __getstate__(self) -> dict[str, Any]:
    """What a worker process needs: no lock, stream or parsed ops (rebuilt from their specs)."""
    state = {k: v for k, v in self.__dict__.items()
             if k not in ("_lock", "_stream", "_orders", "preprocess", "batch_preprocess")}
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self.preprocess = transforms.parse(self._specs[0])
    self.batch_preprocess = transforms.parse_batch(self._specs[1])
    self._orders, self._lock, self._stream = {}, threading.Lock(), None

  # --- state ----------------------------------------------------------------------------------

  def get_state(self) -> dict[str, int]:
    """{"epoch": e, "position": p}: the next batch is batch p of epoch e."""
    epoch, position = divmod(self._next_step, self.steps_per_epoch)
    return {"epoch": int(epoch), "position": int(position)}

  def set_state(self, state: dict[str, int]) -> None:
    """Continue from a get_state() value."""
    try:
      epoch, position = int(state["epoch"]), int(state["position"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"DataIterator.set_state: expected {{'epoch': int, 'position': int}}; got {state!r}") from e
    if epoch < 0 or not 0 <= position < self.steps_per_epoch:
      raise ValueError(f"DataIterator.set_state: need epoch >= 0 and 0 <= position < {self.steps_per_epoch}; "
                       f"got {state!r}")
    self._next_step = epoch * self.steps_per_epoch + position
    self.close()

  def close(self) -> None:
    """Stops the worker threads or processes of the current stream (the next batch starts a new one)."""
    if self._stream is not None and hasattr(self._stream, "close"):
      self._stream.close()
    self._stream = None

  # --- batches --------------------------------------------------------------------------------

  def _order(self, epoch: int) -> np.ndarray:
    """(L,) the dataset indices of epoch `epoch`, in the order its global batches take them."""
    return self._epoch(epoch)[0]

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(the epoch's order, (L,) the copy number of each entry under repeated augmentation, else None)."""
    with self._lock:
      if epoch not in self._orders:
        n = len(self.source)
        if not self.shuffle:
          order = np.arange(n)
        elif hasattr(self.source, "epoch_order"):  # a source with its own epoch order (ArraySource)
          order = np.asarray(self.source.epoch_order(self.seed, epoch))
        else:
          order = np.random.default_rng((_ORDER_SALT, self.seed, epoch)).permutation(n)
        copies = None
        if self.repeated_augmentation:
          order, copies = self._repeated_order(order)
        self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
        self._orders[epoch] = (order, copies)
      return self._orders[epoch]

  def _repeated_order(self, permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The global order whose batch k holds, as process p's slice, entries [k b, (k + 1) b) of process p's
    repeated_augmentation_order (b: the local batch), and the copy number of each entry."""
    per_process = [repeated_augmentation_order(permutation, self.repeated_augmentation, self.process_count, p)
                   for p in range(self.process_count)]
    used = self.steps_per_epoch * self.local_batch_size

    def interleave(column: int) -> np.ndarray:
      lists = np.stack([entry[column][:used] for entry in per_process])  # (P, steps * b)
      return lists.reshape(self.process_count, self.steps_per_epoch, self.local_batch_size).transpose(1, 0, 2).ravel()

    return interleave(0), interleave(1)

  def load_batch(self, step: int) -> dict[str, np.ndarray]:
    """Global batch `step` (counting over epochs), this process's slice, preprocessed."""
    epoch, position = divmod(step, self.steps_per_epoch)
    order, copies = self._epoch(epoch)
    start = position * self.batch_size + self.process_index * self.local_batch_size
    positions = np.arange(start, start + self.local_batch_size)
    valid = positions < len(order)
    examples, bad = [], 0
    for slot, pos in enumerate(np.where(valid, positions, 0)):
      example, replaced = self._load_example(order, int(pos), epoch, copies)
      if replaced and valid[slot]:
        bad += 1
        if not self.drop_remainder:
          valid[slot] = False  # a padded (eval) pass leaves it out rather than counting another image twice
      examples.append({k: example[k] for k in self.keys})
    try:
      batch = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in self.keys}
    except ValueError as e:
      shapes = sorted({str(np.shape(ex["image"])) for ex in examples if "image" in ex})
      raise ValueError(f"DataIterator: examples of one batch differ in shape (images {shapes}); end the "
                       "preprocess with a fixed-size op such as resize(224) or random_crop(224)") from e
    if not self.drop_remainder:
      batch["mask"] = valid
    rng = np.random.default_rng((_BATCH_SALT, self.seed, step, self.process_index))
    batch = self.batch_preprocess(batch, rng)
    if self.skip_bad_images:
      batch[_BAD_KEY] = np.asarray(bad, np.int64)
    return batch

  def _load_example(self, order: np.ndarray, pos: int, epoch: int,
                    copies: np.ndarray | None = None) -> tuple[dict[str, Any], bool]:
    """(example at `pos` of the epoch's order preprocessed, whether it was replaced): with skip_bad_images, an
    example whose image does not decode is replaced by the next one in the order that does. copies: the copy
    number of each entry (repeated augmentation), a part of its random draws' key."""
    for attempt in range(len(order)):
      at = (pos + attempt) % len(order)
      index = int(order[at])
      key = (_EXAMPLE_SALT, self.seed, epoch, index) + (() if copies is None else (int(copies[at]),))
      rng = np.random.default_rng(key)
      try:
        return self.preprocess(dict(self.source[index]), rng), attempt > 0
      except transforms.BadImageError as e:
        if not self.skip_bad_images:
          raise
        logging.warning("%s: replaced by the next example (skip_bad_images)", e.args[0].split(";")[0])
    raise ValueError(f"DataIterator: none of the {len(order)} examples decodes (skip_bad_images=True)")

  def _make_stream(self) -> Iterator[dict[str, np.ndarray]]:
    stop = 2 ** 62 if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
    if self._next_step >= stop:
      return iter(())
    if self.num_workers:
      return _process_pool_stream(self, self._next_step, stop, self.num_workers, self.prefetch)
    try:
      import grain  # noqa: PLC0415 (optional dependency: pip install tokax[data])
    except ImportError:
      return _thread_pool_stream(self.load_batch, self._next_step, stop, self.num_threads, self.prefetch)
    steps = grain.MapDataset.range(self._next_step, stop)
    return iter(steps.map(self.load_batch).to_iter_dataset(
        grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)))

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._stream is None:
      self._stream = self._make_stream()
    batch = next(self._stream)
    self._next_step += 1
    bad = batch.pop(_BAD_KEY, None)
    if bad is not None:
      self.bad_examples += int(np.sum(bad))  # (1,) after a worker process (ascontiguousarray)
    return batch


def _pool_stream(pool: Any, load: Any, start: int, stop: int, prefetch: int,
                 receive: Any = None, discard: Any = None) -> Iterator[Any]:
  """receive(load(start)), receive(load(start + 1)), ... in order from an executor, `prefetch` ahead.

  The pool is shut down at the end and when the stream is dropped early (without waiting for the
  prefetched batches); discard(result) is called on each prefetched result that was never received,
  once it is done.
  """
  import collections  # noqa: PLC0415

  pending = collections.deque()
  try:
    step = start
    while pending or step < stop:
      while step < stop and len(pending) < max(prefetch, 1):
        pending.append(pool.submit(load, step))
        step += 1
      result = pending.popleft().result()
      yield receive(result) if receive else result
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    if discard:
      for future in pending:
        future.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() is not None else discard(f.result()))


def _thread_pool_stream(load, start: int, stop: int, num_threads: int, prefetch: int) -> Iterator[Any]:
  """load(start), load(start + 1), ... in order on a thread pool (grain's stand-in)."""
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  return _pool_stream(ThreadPoolExecutor(num_threads), load, start, stop, prefetch)


_WORKER_ITERATOR: DataIterator | None = None  # a worker process's copy (set by _start_worker)


def _start_worker(payload: bytes, parent_pid: int | None = None, parent_death_signal: bool = False) -> None:
  import pickle  # noqa: PLC0415

  global _WORKER_ITERATOR
  if parent_pid is not None:
    die_with_parent(parent_pid, parent_death_signal=parent_death_signal)
  _WORKER_ITERATOR = pickle.loads(payload)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, *, parent_death_signal: bool = True, interval_s: float = 0.5) -> str:
  """Ends this process (SIGKILL / os._exit) when its parent `parent_pid` ends, even if that is killed with SIGKILL.

  Linux with parent_death_signal: prctl(PR_SET_PDEATHSIG, SIGKILL) (the kernel sends it when the thread
  that started this process ends, so only for processes started from the parent's main thread);
  otherwise a daemon thread checks os.getppid() every interval_s (an orphan is re-parented). Returns
  the way taken: "prctl" or "watch".
  """
  if parent_death_signal and sys.platform.startswith("linux"):
    try:
      import ctypes  # noqa: PLC0415
      import signal  # noqa: PLC0415

      libc = ctypes.CDLL(None, use_errno=True)
      if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent ended before the signal was armed
          os._exit(1)
        return "prctl"
    except (OSError, AttributeError):
      pass

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(interval_s)
    os._exit(1)

  threading.Thread(target=watch, name="tokax-watch-parent", daemon=True).start()
  return "watch"


SharedBatch = tuple[str, list[tuple[str, str, tuple[int, ...], int]]]  # block name, (key, dtype, shape, offset)


def _worker_load_batch(step: int) -> SharedBatch:
  """Batch `step`, written into a new shared-memory block that the main process frees (_receive_batch)."""
  from multiprocessing import shared_memory  # noqa: PLC0415

  arrays = {k: np.ascontiguousarray(v) for k, v in _WORKER_ITERATOR.load_batch(step).items()}
  block = shared_memory.SharedMemory(create=True, size=max(1, sum(a.nbytes for a in arrays.values())))
  layout, offset = [], 0
  for key, array in arrays.items():
    np.ndarray(array.shape, array.dtype, buffer=block.buf, offset=offset)[...] = array
    layout.append((key, array.dtype.str, array.shape, offset))
    offset += array.nbytes
  block.close()
  return block.name, layout


def _receive_batch(shared: SharedBatch) -> dict[str, np.ndarray]:
  """The batch a worker wrote (copied out), its shared-memory block freed."""
  from multiprocessing import shared_memory  # noqa: PLC0415

  name, layout = shared
  block = shared_memory.SharedMemory(name=name)
  try:
    return {key: np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=offset).copy()
            for key, dtype, shape, offset in layout}
  finally:
    block.close()
    block.unlink()


def _discard_batch(shared: SharedBatch) -> None:
  try:
    from multiprocessing import shared_memory  # noqa: PLC0415
  except ImportError:  # the interpreter is shutting down: the resource tracker frees the block
    return
  block = shared_memory.SharedMemory(name=shared[0])
  block.close()
  block.unlink()


def _process_pool_stream(iterator: DataIterator, start: int, stop: int, num_workers: int,
                         prefetch: int) -> Iterator[dict[str, np.ndarray]]:
  """iterator.load_batch(start), (start + 1), ... in order, built by `num_workers` spawned processes.

  Spawned, not forked: the parent may hold a JAX runtime and threads, which a fork would copy
  half-way. The source and the op specs must pickle (lists, arrays, the tfds and folder sources do).
  """
  import multiprocessing  # noqa: PLC0415
  import pickle  # noqa: PLC0415
  from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

  try:
    payload = pickle.dumps(iterator)  # once here, not once per worker by the executor
  except Exception as e:  # noqa: BLE001 (any pickling failure: say which field to change)
    raise ValueError(f"DataIterator.num_workers: the source or ops do not pickle ({type(e).__name__}: {e}); "
                     "use num_workers=0 (threads) or a picklable source") from e
  # The pool starts its workers from the thread that submits (this one, below); a parent-death signal is
  # tied to that thread, so it is used only from the main thread (else the workers watch the parent's pid).
  main_thread = threading.current_thread() is threading.main_thread()
  pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(payload, os.getpid(), main_thread))
  return _pool_stream(pool, _worker_load_batch, start, stop, prefetch, _receive_batch, _discard_batch)


RA_SELECTED_ROUND = 256  # DeiT's RASampler / timm's RepeatAugSampler(selected_round=256)


def repeated_augmentation_selected(num_examples: int, num_repeats: int, process_count: int) -> int:
  """How many entries of its repeated list each process keeps per epoch: timm RepeatAugSampler's
  num_selected_samples (selected_round=256, selected_ratio=process_count)."""
  num_samples = -(-num_examples * num_repeats // process_count)
  if num_examples >= RA_SELECTED_ROUND:
    selected = num_examples // RA_SELECTED_ROUND * RA_SELECTED_ROUND // process_count
  else:
    selected = -(-num_examples // process_count)
  return min(selected, num_samples)


def repeated_augmentation_order(permutation: np.ndarray, num_repeats: int, process_count: int,
                                process_index: int) -> tuple[np.ndarray, np.ndarray]:
  """Process `process_index`'s epoch under repeated augmentation: ((S,) dataset indices, (S,) copy numbers).

  timm's RepeatAugSampler.__iter__ given `permutation` (N,): each entry repeated num_repeats times in a row,
  entries process_index, process_index + P, ... of that list (wrapping around to pad), the first
  S = repeated_augmentation_selected(N, num_repeats, P) kept. A copy number is the entry's position in the
  repeated list, so every copy of an example in an epoch has its own.
  """
  permutation = np.asarray(permutation)
  repeated_size = len(permutation) * num_repeats
  total = -(-repeated_size // process_count) * process_count
  selected = repeated_augmentation_selected(len(permutation), num_repeats, process_count)
  positions = np.arange(process_index, total, process_count)[:selected] % repeated_size
  return permutation[positions // num_repeats], positions


def make_iterator(name: str | Source, *, batch_size: int, split: str = "train", data_dir: str | None = None,
                  source_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> DataIterator:
  """DataIterator over get_source(name, split, ...) (or a Source given directly); kwargs as DataIterator's.

  The trainer's entry point: host-local numpy batches with get_state / set_state.
  """
  source = name if not isinstance(name, str) else get_source(name, split, data_dir=data_dir, **(source_kwargs or {}))
  return DataIterator(source, batch_size=batch_size, **kwargs)
