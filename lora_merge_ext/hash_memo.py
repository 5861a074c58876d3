"""Remember what this process worked out about a file (its addnet hash, a description of its
header) so that merging the same inputs again (in the tab, say) does not work it out again.

A value is remembered under the file's identity: device, inode, size, and the modification and change
times in nanoseconds.  Any write to the file changes its change time, which no program can set back.
File times only advance in clock ticks, though, so a file written again within one tick of being
read could keep its identity; a value is therefore remembered only for a file that had been left
alone for a while before it was read (git treats "racily clean" files the same way).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

SETTLED_NS = 2_000_000_000  # a file untouched for this long before it is read
LIMIT = 4096  # hashes remembered, the least recently used forgotten first


def identity(st: os.stat_result) -> tuple:
    """What changes whenever the file's content may have changed."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileMemo:
    """Values remembered by file identity, at most `limit`, the least recently used forgotten first."""

    def __init__(self, limit: int):
        self.limit = limit
        self._values: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        _MEMOS.append(self)

    def recall(self, ident: tuple):
        """The value remembered for this identity, if any (else None)."""
        with self._lock:
            found = self._values.get(ident)
            if found is not None:
                self._values.move_to_end(ident)
            return found

    def remember(self, ident: tuple, value, read_at_ns: int) -> None:
        """Remember value for ident, unless the file was changed within SETTLED_NS before read_at_ns
        (wall-clock time, time.time_ns(), taken before the read)."""
        *_, mtime_ns, ctime_ns = ident
        if read_at_ns - max(mtime_ns, ctime_ns) < SETTLED_NS:
            return
        with self._lock:
            self._values[ident] = value
            self._values.move_to_end(ident)
            while len(self._values) > self.limit:
                self._values.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


_MEMOS: list[FileMemo] = []
_hashes = FileMemo(LIMIT)


def recall(ident: tuple) -> str | None:
    """The hash remembered for this identity, if any."""
    return _hashes.recall(ident)


def remember(ident: tuple, hexdigest: str, read_at_ns: int) -> None:
    """Remember a file's hash (see FileMemo.remember)."""
    _hashes.remember(ident, hexdigest, read_at_ns)


def forget_all() -> None:
    """Forget everything remembered about files (benchmarks measure a first merge with this)."""
    for memo in _MEMOS:
        memo.clear()
