"""Write a file's data section in order from a few reused buffers, hashing it on a second thread.

A writer that fills fresh memory the size of its output pays for every new page; these buffers
stay in the cache and are reused, so the only new memory is the page cache the file needs anyway.
Each full buffer is written at its place in the file, then handed to a thread that adds it to the
sha256 and gives it back.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading

import torch

BUFFER_BYTES = 4 << 20
DEPTH = 3  # buffers: one being filled, one being hashed, one spare


class OrderedWriter:
    """take(n) gives the next n bytes of the data section as a uint8 tensor to fill; finish() writes
    what is left and returns the sha256 of everything written."""

    def __init__(self, fd: int, offset: int):
        self._fd, self._at = fd, offset
        self._free: queue.Queue = queue.Queue()
        for _ in range(DEPTH - 1):
            self._free.put(torch.empty(BUFFER_BYTES, dtype=torch.uint8))
        self._current, self._used = torch.empty(BUFFER_BYTES, dtype=torch.uint8), 0
        self._written: queue.Queue = queue.Queue()
        self._digest = hashlib.sha256()
        self._hasher = threading.Thread(target=self._hash, name="sshs-hash", daemon=True)
        self._hasher.start()

    def take(self, nbytes: int) -> torch.Tensor:
        """The next nbytes of the file, to be filled before the next take or finish."""
        if self._used + nbytes > self._current.numel():
            self._flush()
            if nbytes > self._current.numel():  # larger than a buffer: one of its own, used once
                self._free.put(self._current)
                self._current = torch.empty(nbytes, dtype=torch.uint8)
        view = self._current[self._used:self._used + nbytes]
        self._used += nbytes
        return view

    def finish(self) -> str:
        """Write the rest; the sha256 hex digest of all bytes taken."""
        self._flush()
        self._written.put(None)
        self._hasher.join()
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Stop the hash thread (the file is being thrown away)."""
        self._written.put(None)

    def _flush(self) -> None:
        if not self._used:
            return
        data = memoryview(self._current.numpy())[:self._used]
        at = self._at
        while data:
            n = os.pwrite(self._fd, data, at)
            if n <= 0:
                raise OSError(errno.EIO, "write returned no progress")
            data, at = data[n:], at + n
        self._at += self._used
        self._written.put((self._current, self._used))
        self._current, self._used = self._free.get(), 0

    def _hash(self) -> None:
        while (item := self._written.get()) is not None:
            buffer, used = item
            self._digest.update(memoryview(buffer.numpy())[:used])
            if buffer.numel() == BUFFER_BYTES:
                self._free.put(buffer)
