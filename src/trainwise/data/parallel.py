"""Decoding many files on every core: in worker processes when the work outweighs starting them.

Pillow's decoders release the GIL, but hashing, statistics and signatures around them do not: the
thread pool that ingest used kept 2 cores at 35-50 files/s on 400x533 JPEGs (issue 10). Worker
processes each take a whole file. Results come back in input order.

Starting the first workers of a process costs about 0.6 s here (the forkserver imports numpy, cv2,
Pillow and pandas once), later pools about 0.03 s (2 shared cores, 1,000 400x533 JPEGs: 1.10 s for
the first pool, 0.53 s for the next, 0.92 s in this process); that is longer than decoding a few
hundred small images takes. So the first files are decoded in this process while timing them, and
the rest go to workers only when they are expected to take longer than PARALLEL_AFTER_S (before
the first start) or PARALLEL_AFTER_WARM_S: two workers ran 1.8x as fast (1,000 JPEGs, ingest's
scan; only about 1.0x while another job held a core), so they pay off when 0.45x the serial time
exceeds the start-up.

Workers are forked from a clean server process (forkserver), not from this one: a step's process
runs MLflow's and tqdm's threads, and forking a process with threads can deadlock the child (and
Python 3.12+ warns about it). As with any forkserver or spawn start, a script that calls trainwise
must keep its own work under `if __name__ == "__main__":` (the server imports the main module);
the `trainwise` command, `python -m trainwise` and notebooks need nothing. Workers are pure: a
file in, values out; this process writes every cache.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

PARALLEL_AFTER_S = 1.5  # estimated serial work left over which the first workers are started
PARALLEL_AFTER_WARM_S = 0.1  # the same once the server runs (a second pool in the same process)
PROBE_ITEMS = 32  # decoded here first, timed, to estimate the rest
MAX_WORKERS = 16
_server = {"started": False}  # whether this process has started the worker server
_PRELOAD = ["__main__", "trainwise.data.manifest", "trainwise.data.cache"]  # where the workers' functions live


def worker_count() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow), at most MAX_WORKERS."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_WORKERS))


def map_files(fn: Callable[[T], R], items: Sequence[T], *, desc: str, workers: int | None = None) -> Iterator[R]:
    """fn(item) for every item, yielded in order, with a progress bar; in worker processes when it pays.

    `fn` must be a module-level function (workers import it by name) and its items and results
    picklable. An exception raised by fn for one item is raised here, as fn raised it (so fn should
    name the file in it); the remaining items are cancelled.
    """
    workers = worker_count() if workers is None else workers
    with tqdm(total=len(items), desc=desc, unit="img", mininterval=1.0) as progress:
        started = time.perf_counter()
        probe = min(len(items), PROBE_ITEMS)
        for item in items[:probe]:
            yield fn(item)
            progress.update()
        rest = items[probe:]
        if not rest:
            return
        expected = (time.perf_counter() - started) / probe * len(rest)
        if workers < 2 or expected < (PARALLEL_AFTER_WARM_S if _server["started"] else PARALLEL_AFTER_S):
            for item in rest:
                yield fn(item)
                progress.update()
            return
        log.debug("%s: %d files, about %.1f s of work left: %d worker processes", desc, len(rest), expected, workers)
        yield from _in_workers(fn, rest, workers, progress)


def _in_workers(fn: Callable[[T], R], items: Sequence[T], workers: int, progress: tqdm) -> Iterator[R]:
    _server["started"] = True
    context = multiprocessing.get_context("forkserver")
    # Modules the server imports once, so each worker starts with them (only before the server's first start).
    context.set_forkserver_preload(_PRELOAD)
    # Chunks amortise the pickling round trip (about 50 us) but stay small enough for an even finish.
    chunk = max(1, min(64, len(items) // (workers * 8)))
    pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=context)
    try:
        for result in pool.map(fn, items, chunksize=chunk):
            yield result
            progress.update()
    except BrokenProcessPool as exc:
        raise RuntimeError(f"a decoding worker process died ({exc}); was it out of memory? Rerun, or free memory") from None
    finally:
        # On an error (or Ctrl-C) queued chunks are dropped; those running finish in well under a second.
        pool.shutdown(wait=True, cancel_futures=True)
