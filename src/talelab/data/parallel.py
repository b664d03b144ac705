"""Run a function over batches on every core, results in input order, with memory bounded by a few batches.

The data stages (prepare's cleaning, pretokenize's encoding) stream corpora larger than memory through worker
processes. `Pool.imap` would read the whole input ahead into its task queue; here at most IN_FLIGHT_PER_WORKER
batches per worker wait. Results come back in input order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator

IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: every core stays busy while memory stays bounded
IN_PROCESS_BATCHES = 4  # an input of fewer batches runs in this process: starting workers takes ~1 s


def ordered_map(function: Callable, batches: Iterable, workers: int, setup: Callable, setup_args: tuple = ()) \
        -> Iterator:
    """function(batch) for every batch, in order, on `workers` processes (0: one per core).

    `setup(*setup_args)` runs once in each worker (or here, for a small input or one worker) before any batch:
    the place to keep settings or load a tokenizer. Both callables must be module-level functions (picklable)."""
    workers = worker_count(workers)
    batches = iter(batches)
    head = list(itertools.islice(batches, IN_PROCESS_BATCHES))
    if workers == 1 or len(head) < IN_PROCESS_BATCHES:
        setup(*setup_args)
        yield from map(function, itertools.chain(head, batches))
        return
    # forkserver: workers start from a clean process, never a fork of one that runs threads (torch, tqdm).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers, initializer=_start, initargs=(setup, setup_args)) as pool:
        pending = deque()
        for batch in itertools.chain(head, batches):
            pending.append(pool.apply_async(function, (batch,)))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def worker_count(workers: int) -> int:
    """The number of worker processes `workers` asks for (0: one per core)."""
    return workers or os.cpu_count() or 1


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` items in order (the last may be shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def _start(setup: Callable, setup_args: tuple) -> None:
    """A worker's initialiser: Ctrl-C is the main process's to handle (it stops the pool), then the setup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup(*setup_args)
