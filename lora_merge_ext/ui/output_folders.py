"""The folders a tab merge writes into: created when missing, and removed again when the write
fails, unless another write into them is still under way (that merge's file is not begun yet, so
the folder looks empty)."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import LoraMergeError

_GUARD = threading.Lock()
_WRITERS: dict[str, int] = {}  # folder -> writes under way inside it (guarded by _GUARD)


@contextmanager
def folder_for_write(folder: Path):
    """Create folder (and its missing parents) for the duration of a write; if the write raises,
    remove the ones created here that are empty and that no other write is using."""
    using = [os.fspath(f) for f in (folder, *folder.parents)]
    with _GUARD:
        created = _make_folders(folder)
        for f in using:
            _WRITERS[f] = _WRITERS.get(f, 0) + 1
    failed = True
    try:
        yield
        failed = False
    finally:
        with _GUARD:
            for f in using:
                _WRITERS[f] -= 1
                if not _WRITERS[f]:
                    del _WRITERS[f]
            if failed:
                _remove_if_empty([f for f in created if os.fspath(f) not in _WRITERS])


def _make_folders(folder: Path) -> list[Path]:
    """Create folder and its missing parents; returns the ones created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoraMergeError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove folders, deepest first, stopping at the first one that is not empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
