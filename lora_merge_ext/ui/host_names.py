"""The names the WebUI finds a LoRA by: its file name without extension, wherever in the Lora folders it
lies, and its alias, the `ss_output_name` in its metadata (reference §2.4, "Listing").  Two files that
answer to one name hide each other from `<lora:…>` and `<ljl:…>` tags.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import LoraMergeError
from ..safetensors_header import read_header

HOST_EXTENSIONS = (".safetensors", ".pt", ".ckpt")  # what the WebUI lists as LoRAs
_ALIASES: dict[Path, tuple[tuple, str | None]] = {}  # path → (stat stamp, alias) of the last read


def files_answering_to(name: str, folders: list[Path]) -> list[tuple[Path, str]]:
    """(file, how) for each file of the folders (sub-folders included) that the WebUI would find as
    name: how is "file name" or "alias"."""
    found = []
    for path in _walk(folders):
        if path.stem == name:
            found.append((path, "file name"))
        elif path.suffix.lower() == ".safetensors" and _alias(path) == name:
            found.append((path, "alias"))
    return found


def _walk(folders: list[Path]):
    seen = set()
    for root in folders:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a folder link that loops back, or a folder inside another one
                dirnames[:] = []
                continue
            seen.add(real)
            for fn in filenames:
                if fn.lower().endswith(HOST_EXTENSIONS):
                    yield Path(dirpath) / fn


def _alias(path: Path) -> str | None:
    """The file's ss_output_name (None without one, or when the file cannot be read), remembered
    while the file is unchanged."""
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    known = _ALIASES.get(path)
    if known and known[0] == stamp:
        return known[1]
    try:
        alias = read_header(path)[1].get("ss_output_name")
    except LoraMergeError:
        alias = None
    _ALIASES[path] = (stamp, alias)
    return alias
