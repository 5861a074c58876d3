"""Write a file's data section in order, piece by piece, from a few reused buffers: pieces are
filled on worker threads, written in order, and hashed (and checked) on a thread of their own.

A writer that fills fresh memory the size of its output pays for every new page; these buffers
stay in the cache and are reused, so the only new memory is the page cache the file needs anyway.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from .atomic_write import write_all
from .workers import one_thread_initializer

BUFFER_BYTES = 4 << 20
Fill = Callable[[torch.Tensor], None]
Check = Callable[[torch.Tensor], bool]


class OrderedWriter:
    """put(n, fill) queues the next n bytes of the file, which fill(buffer) writes into a uint8
    buffer of n bytes (on one of `workers` threads, or in the caller's when 0); finish() writes what
    is left and returns the sha256 of everything written.  A piece larger than BUFFER_BYTES gets a
    buffer of its own.  check(piece), run after fill where fill runs (the hash thread, the one that
    takes longest, does nothing else), can refuse pieces: see passed."""

    def __init__(self, fd: int, offset: int, workers: int = 0, check: Check | None = None):
        self._fd, self._at = fd, offset
        self._free: queue.Queue = queue.Queue()
        self._check, self.passed = check, True
        for _ in range(max(workers, 1) + 2):  # one per worker, one being written, one being hashed
            self._free.put(torch.empty(BUFFER_BYTES, dtype=torch.uint8))
        self._torch_threads = torch.get_num_threads()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lora-merge",
                                        initializer=one_thread_initializer) if workers > 0 else None
        self._pending: deque[tuple[Future | None, torch.Tensor, int]] = deque()
        self._written: queue.Queue = queue.Queue()
        self._digest = hashlib.sha256()
        self._hasher = threading.Thread(target=self._hash, name="sshs-hash", daemon=True)
        self._hasher.start()

    def put(self, nbytes: int, fill: Fill) -> None:
        """Queue the next nbytes; returns once they are being filled (an earlier piece may be
        written meanwhile).  An error raised by fill is raised here or by a later put or finish."""
        while self._pending and (self._free.empty() or self._pending[0][0] is None or self._pending[0][0].done()):
            self._write_oldest()
        buffer = self._free.get() if nbytes <= BUFFER_BYTES else torch.empty(nbytes, dtype=torch.uint8)
        piece = buffer[:nbytes]
        if self._pool is None:
            self._fill_and_check(fill, piece)
            self._pending.append((None, buffer, nbytes))
        else:
            self._pending.append((self._pool.submit(self._fill_and_check, fill, piece), buffer, nbytes))

    def _fill_and_check(self, fill: Fill, piece: torch.Tensor) -> None:
        fill(piece)
        if self._check is not None and self.passed and not self._check(piece):
            self.passed = False

    def finish(self) -> str:
        """Write the rest; the sha256 hex digest of all bytes written."""
        while self._pending:
            self._write_oldest()
        self._stop()
        self._hasher.join()
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the workers and the hash thread (the file is being thrown away)."""
        for future, _, _ in self._pending:
            if future is not None:
                future.cancel()
        self._stop()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            torch.set_num_threads(self._torch_threads)  # as map_in_workers: torch keeps the last count set
        self._written.put(None)

    def _write_oldest(self) -> None:
        future, buffer, used = self._pending[0]
        if future is not None:
            future.result()
        self._pending.popleft()
        write_all(self._fd, memoryview(buffer.numpy())[:used], self._at)
        self._at += used
        self._written.put((buffer, used))

    def _hash(self) -> None:
        while (item := self._written.get()) is not None:
            buffer, used = item
            self._digest.update(memoryview(buffer.numpy())[:used])
            if buffer.numel() == BUFFER_BYTES:
                self._free.put(buffer)
