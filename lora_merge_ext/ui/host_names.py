"""The names the WebUI finds a LoRA by: its file name without extension, wherever in the Lora folders it
lies, and its alias, the `ss_output_name` in its metadata (reference §2.4, "Listing").  Two files that
answer to one name hide each other from `<lora:…>` and `<ljl:…>` tags.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoraMergeError
from ..safetensors_header import MAX_HEADER_BYTES, open_input_file
from .library import walk_files

HOST_EXTENSIONS = (".safetensors", ".pt", ".ckpt")  # what the WebUI lists as LoRAs


def files_answering_to(name: str, folders: list[Path]) -> list[tuple[Path, str]]:
    """(file, how) for each file of the folders (sub-folders included) that the WebUI would find as
    name: how is "file name" or "alias"."""
    found = []
    for path in (p for root in folders for p in walk_files(root, HOST_EXTENSIONS, hidden=True)):
        if path.stem == name:
            found.append((path, "file name"))
        elif path.suffix.lower() == ".safetensors" and _has_alias(path, name):
            found.append((path, "alias"))
    return found


def _has_alias(path: Path, name: str) -> bool:
    """True when the file's metadata says ss_output_name = name.  Only a header that holds the name's
    bytes is parsed: a collection of hundreds of SDXL LoRAs is checked in well under a second."""
    try:
        f, _ = open_input_file(path)  # a regular file only: opening a named pipe would wait for a writer
        with f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return False
            head = f.read(size)
    except (OSError, LoraMergeError):
        return False
    if name.encode("utf-8") not in head and json.dumps(name)[1:-1].encode("ascii") not in head:
        return False
    try:
        metadata = json.loads(head).get("__metadata__")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(metadata, dict) and metadata.get("ss_output_name") == name
