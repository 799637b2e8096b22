"""The order of the streams: which example each batch slot reads, per process, and the seeds of their randomness.

Train: one global stream, the same on every process (epoch e is a permutation of the n examples, a function of
(seed, e)); global batch j is the stream positions [j B, (j + 1) B), process i reads its rows [i b, (i + 1) b).
Eval: one pass in index order, process i reading examples i, i + P, ..., padded to whole batches with real
examples flagged False. The conventions are those of the `pipeline` module docstring; `pipeline`, `instances`
and `annotations` build their iterators from these pieces (`example_batches` + `to_iterator` for per-example
maps, `TrainOrder` for whole-batch maps).
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), None defaulting to `jax.process_index()` / `jax.process_count()`."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    return process_index, process_count


def check_fills_a_batch(num_examples: int, batch_size: int, process_count: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples < batch_size * process_count:
        raise ValueError(f"{num_examples} examples cannot fill one global batch of {batch_size * process_count} "
                         f"({process_count} processes x {batch_size})")


def index_dataset(num_examples: int, batch_size: int, *, train: bool, seed: int, num_epochs: int | None,
                  process_index: int, process_count: int) -> grain.MapDataset:
    """MapDataset of (example index, is real) pairs in the order to read. Train: the global stream, the same on
    every process (`process_batches` takes a process's rows); eval: this process's examples."""
    if train:
        check_fills_a_batch(num_examples, batch_size, process_count)
        ds = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(num_epochs)  # shuffle uses seed + epoch
        return ds.map(lambda i: (int(i), True))
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_examples == 0:
        raise ValueError("the eval split is empty")
    # Pad to whole batches on every process; padded slots read a real example, flagged False.
    per_step = batch_size * process_count
    padded = -(-num_examples // per_step) * per_step
    ds = grain.MapDataset.range(padded)[process_index::process_count]
    return ds.map(lambda i: (int(i) % num_examples, int(i) < num_examples))


def process_batches(ds: grain.MapDataset, batch_size: int, process_index: int,
                    process_count: int) -> grain.MapDataset:
    """This process's batches of the global stream `ds`: element j stacks positions [j B + i b, j B + (i + 1) b)
    (b = batch_size, B = b x process_count, i = process_index); a last partial global batch is dropped."""
    ds = ds.batch(batch_size, drop_remainder=True)  # element m: positions [m b, (m + 1) b)
    return ds[process_index:len(ds) // process_count * process_count:process_count]


def example_batches(num_examples: int, batch_size: int, example, *, train: bool, seed: int,
                    num_epochs: int | None, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's batches of `example((index, is_real), rng)`. In training the random map runs over the
    global stream, so an example's rng is a function of (seed, its global position) only."""
    ds = index_dataset(num_examples, batch_size, train=train, seed=seed, num_epochs=num_epochs,
                       process_index=process_index, process_count=process_count)
    ds = ds.random_map(example, seed=element_seed(seed))
    if train:
        return process_batches(ds, batch_size, process_index, process_count)
    return ds.batch(batch_size)


def element_seed(seed: int) -> int:
    """A 32-bit seed for per-example and per-batch randomness. ([seed, 0]: process 0's seed from when each process
    had a stream of its own, so that one process's stream is unchanged.)"""
    return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


def position_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the example at `position` of the global training stream: Philox keyed by
    `element_seed(seed)`, counting from the position as grain's random_map does, in a lane of its own."""
    return np.random.Generator(np.random.Philox(element_seed(seed), counter=[0, 0, 1, position]))


def to_iterator(ds: grain.MapDataset, *, num_threads: int, prefetch: int, worker_count: int):
    """The iterator over `ds`, a MapDataset of batches. Batched before to_iter_dataset: each element is a whole
    batch, so threads and worker processes split work by batch and the order never depends on their number."""
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # Starting grain workers reads absl flags, which raises unless they were parsed (as
            # absl.app.run does); their defaults are what we want.
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)))
    return iter(iter_ds)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class TrainOrder:
    """The global training stream and this process's part of it: position p is example permutation(p // n)[p % n],
    each epoch's permutation of the n examples a function of (seed, epoch). Global batch j is positions
    [j B, (j + 1) B), B = b x process_count; process i reads its rows [i b, (i + 1) b)."""

    num_examples: int
    batch_size: int
    seed: int
    process_index: int
    process_count: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def first_row(self) -> int:
        """This process's first row in a global batch."""
        return self.process_index * self.batch_size

    def num_batches(self, num_epochs: int | None) -> int:
        if num_epochs is None:
            return 2**62 // self.global_batch  # endless in practice
        return num_epochs * self.num_examples // self.global_batch  # a last partial batch is dropped

    def positions(self, batch: int) -> np.ndarray:
        """(b,) the stream positions of this process's rows of global batch `batch`."""
        start = batch * self.global_batch + self.first_row
        return np.arange(start, start + self.batch_size)

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """(b,) the examples at stream `positions`."""
        n = self.num_examples
        epochs, offsets = np.divmod(positions, n)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            indices[rows] = _epoch_permutation(self.seed, int(epoch), n)[offsets[rows]]
        return indices
