"""Run the independent pieces of a merge (modules, input files) on worker threads, one core each.

torch's own parallelism splits every op over all cores and waits for the slowest core at the end of
each op.  A merge is hundreds of small ops, so a core that is busy elsewhere stalls every one of them
(several times slower on a loaded machine).  Whole pieces on separate threads, each single-threaded in
torch, keep the cores busy without those waits; torch releases the GIL while it computes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def worker_count(device: torch.device | None = None) -> int:
    """Threads for a merge: torch's thread count for this thread (the user's setting), at most the
    machine's cores; one on a GPU, where the device does the parallel work."""
    if device is not None and device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def one_thread_initializer() -> None:
    """For a worker thread: torch single-threaded in it (this thread's OpenMP and MKL settings only)."""
    torch.set_num_threads(1)


@contextmanager
def one_torch_thread():
    """torch single-threaded in this thread for the duration (for many small ops, e.g. reading a file
    while its hash is computed on another core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_in_workers(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items, results in order, on `workers` single-threaded workers (in this thread when 1).
    An exception stops the rest and is raised here."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="lora-merge",
                              initializer=one_thread_initializer)
    futures = [pool.submit(fn, item) for item in items]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(before)  # torch remembers the last count set anywhere for threads it starts later
