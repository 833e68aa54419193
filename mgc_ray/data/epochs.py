"""A trial's training epochs, each one's Ray Data execution started while the one before validates.

Every epoch is a new Ray Data execution (`pipeline.train_batches`: a new seeded order, new crops),
and its first batch waits for that execution to start, read and crop its first blocks and fill
the local shuffle window: 1.5 s streamed, 0.4 s materialised at FMA small's size on 2 cores
(results/benchmarks/stream_cpu.md), against a 3.2-s DenseNet-121 epoch on a GPU. `TrainEpochs`
starts epoch e + 1 the moment epoch e's batches run out, so that wait passes while the trial
validates, checkpoints and reports epoch e (results/benchmarks/epoch_gap_cpu.md):

    with TrainEpochs(lambda e: train_batches(datasets, ..., epoch=e), range(start, max_epochs)) as epochs:
        for epoch, batches in epochs:
            train(batches)  # when they run out, epoch + 1's execution starts (not after the last epoch)
            validate(); checkpoint(); report()

A thread pulls the next epoch's first PREFETCH_BATCHES batches and stops; the training loop takes
them and iterates the rest of the epoch itself, as it did before. The epoch is the one
`train_batches` gives for that (seed, epoch): the same crops in the same order, whichever thread
pulls them. `close` (the `with` block's end: a trial stopped early, or failing) shuts the prefetched
execution down, which cancels its Ray Data tasks (Ray Data's iterator does on close).
This module imports no torch (mgc_ray.data's rule): it only moves the pipeline's batches.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

# The next epoch's batches pulled ahead, at most: the first one is the wait this removes; a second
# covers the next while the trial turns from validation to training. Held on the trial's device:
# 2 x 32 windows of 242,615 float32 samples = 62 MB at the paper's batch (Ray Data's own prefetch
# and the object store's blocks are bounded by the pipeline, as in any epoch).
PREFETCH_BATCHES = 2
THREAD_NAME = "mgc-next-epoch"  # the prefetching thread's name (what a test looks for)
_END = object()  # the epoch ran out


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch:
    """An iterator whose first `depth` items a thread pulls now; the consumer iterates the rest itself.

    The source is used by one thread at a time: the thread until it has pulled its items (or was
    closed), then the consumer. An error in the thread is raised where the consumer reaches it.

    Args:
        source: the iterator (a generator with `close`, as `train_batches` is).
        depth: items pulled ahead.
    """

    def __init__(self, source: Iterator, depth: int = PREFETCH_BATCHES) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.source, self.depth = source, depth
        self._items: queue.Queue = queue.Queue()  # at most depth + 1 entries: the thread stops there
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pulled = False  # the thread has finished with the source
        self._thread = threading.Thread(target=self._pull, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        try:
            for _ in range(self.depth):
                if self._closed.is_set():
                    break
                item = next(self.source, _END)
                self._items.put(item)
                if item is _END:
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who raises it in its own thread
            self._items.put(_Failed(exc))
        finally:
            with self._lock:
                self._pulled = True
                if self._closed.is_set():  # closed while it was pulling: the source is still its own
                    _close(self.source)
                    self._items.put(_END)  # a consumer arriving after the close ends at once

    @property
    def ready(self) -> int:
        """Items pulled and waiting for the consumer."""
        return self._items.qsize()

    def __iter__(self) -> Iterator:
        for _ in range(self.depth):
            item = self._items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
        self._thread.join()  # its last pull returned: the rest of the source is the consumer's
        yield from self.source

    def close(self) -> None:
        """Stop pulling and close the source (now, or when the thread's pull in progress returns)."""
        with self._lock:
            self._closed.set()
            pulled = self._pulled
        if pulled:
            _close(self.source)


def _close(source) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class TrainEpochs:
    """The epochs in `epochs`, as (epoch, batches) pairs; each epoch's batches are `batches(epoch)`.

    When an epoch's batches run out, the next epoch's (if `epochs` has one) start in a `Prefetch`.

    Args:
        batches: epoch -> that epoch's batch iterator (`train_batches` for the trial's seed).
        epochs: the epochs to run (a trial restored from a checkpoint starts later).
        depth: batches pulled ahead (PREFETCH_BATCHES); 0 starts no epoch early (as before).
    """

    def __init__(self, batches: Callable[[int], Iterator], epochs: range, depth: int = PREFETCH_BATCHES) -> None:
        self.batches, self.epochs, self.depth = batches, epochs, depth
        self._ahead: tuple[int, Prefetch] | None = None
        self._current = None  # the epoch being trained: its iterator, closed with the rest

    def __iter__(self) -> Iterator[tuple[int, Iterator]]:
        for epoch in self.epochs:
            yield epoch, self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator:
        if self._ahead is not None and self._ahead[0] == epoch:
            source, self._ahead = self._ahead[1], None
        else:
            source = self.batches(epoch)
        self._current = source
        for item in source:
            yield item
        self._current = None
        nxt = epoch + 1
        if self.depth > 0 and nxt in self.epochs:  # not after the last epoch
            self._ahead = (nxt, Prefetch(self.batches(nxt), self.depth))

    @property
    def ahead(self) -> Prefetch | None:
        """The next epoch's prefetch, once the current epoch's batches ran out (None after the last)."""
        return self._ahead[1] if self._ahead is not None else None

    def close(self) -> None:
        """Close the epoch in progress and the one prefetched: their Ray Data executions end, tasks and all."""
        for source in (self._current, self.ahead):
            if source is not None:
                _close(source)
        self._current = self._ahead = None

    def __enter__(self) -> "TrainEpochs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
