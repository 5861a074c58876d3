"""LoRA files read once and reused while Σ changes: a small LRU keyed by path, valid while the
file's (mtime, size) is unchanged.  The bound follows the host's ``lora_in_memory_limit`` (at least
one file, and never fewer than the files the current prompt uses)."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from .. import loading
from ..errors import LoraMergeError
from ..lora_file import LoraFile


@dataclass(frozen=True)
class CachedFile:
    lora: LoraFile
    identity: tuple  # (absolute path, mtime_ns, size)


def identity_of(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


class LoraFileCache:
    def __init__(self):
        self._entries: "OrderedDict[str, CachedFile]" = OrderedDict()

    def get(self, path: str) -> CachedFile:
        """The file's LoraFile, read from disk only when not cached or changed on disk; LoraMergeError
        when it cannot be read (also when it vanished after the host listed it)."""
        try:
            identity = identity_of(path)
        except OSError as exc:
            raise LoraMergeError(f"{path}: cannot read file: {exc.strerror or exc}") from None
        key = identity[0]
        cached = self._entries.get(key)
        if cached is None or cached.identity != identity:
            cached = CachedFile(loading.load_lora(path), identity)
            self._entries[key] = cached
        self._entries.move_to_end(key)
        return cached

    def trim(self, limit: int, keep=()) -> None:
        """Drop least recently used files beyond max(1, limit), never one in `keep` (absolute paths)."""
        keep = set(keep)
        bound = max(1, int(limit or 0), len(keep))
        for key in list(self._entries):
            if len(self._entries) <= bound:
                break
            if key not in keep:
                del self._entries[key]

    def identities(self) -> set:
        return {c.identity for c in self._entries.values()}

    def __len__(self):
        return len(self._entries)

    def __contains__(self, path):
        return os.path.abspath(path) in self._entries

    def clear(self):
        self._entries.clear()
