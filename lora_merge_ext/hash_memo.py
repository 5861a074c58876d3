"""Remember the addnet hashes of the files this process has read, so that merging the same inputs
again (in the tab, say) does not hash them again.

A hash is remembered under the file's identity: device, inode, size, and the modification and change
times in nanoseconds.  Any write to the file changes its change time, which no program can set back.
File times only advance in clock ticks, though, so a file written again within one tick of being
read could keep its identity; a hash is therefore remembered only for a file that had been left
alone for a while before it was read (git treats "racily clean" files the same way).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

SETTLED_NS = 2_000_000_000  # a file untouched for this long before it is read
LIMIT = 4096  # hashes remembered, the least recently used forgotten first

_hashes: OrderedDict[tuple, str] = OrderedDict()
_lock = threading.Lock()


def identity(st: os.stat_result) -> tuple:
    """What changes whenever the file's content may have changed."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def recall(ident: tuple) -> str | None:
    """The hash remembered for this identity, if any."""
    with _lock:
        found = _hashes.get(ident)
        if found is not None:
            _hashes.move_to_end(ident)
        return found


def remember(ident: tuple, hexdigest: str, read_at_ns: int) -> None:
    """Remember hexdigest for ident, unless the file was changed within SETTLED_NS before read_at_ns
    (wall-clock time, time.time_ns(), taken before the read)."""
    *_, mtime_ns, ctime_ns = ident
    if read_at_ns - max(mtime_ns, ctime_ns) < SETTLED_NS:
        return
    with _lock:
        _hashes[ident] = hexdigest
        _hashes.move_to_end(ident)
        while len(_hashes) > LIMIT:
            _hashes.popitem(last=False)


def forget_all() -> None:
    """Forget every remembered hash (benchmarks measure a first merge with this)."""
    with _lock:
        _hashes.clear()
