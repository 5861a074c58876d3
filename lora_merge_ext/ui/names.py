"""Output-name rules: where a merged file may be written.

A merged file goes into the Lora folder, or into one sub-folder of it.  The name and the
sub-folder are plain names: no path separator, not `.` or `..`, no absolute path, no character that
Windows or the `<ljl:name:…>` tag cannot carry.  An existing file is replaced only when the user
asks for it, and an input of the merge is never replaced.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..atomic_write import check_name_length
from ..errors import LoraMergeError

EXTENSION = ".safetensors"
_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def check_plain_name(text: str, what: str = "output name") -> str:
    """Return the stripped name, or raise LoraMergeError saying why it cannot be a file name."""
    name = (text or "").strip()
    if not name:
        raise LoraMergeError(f"{what} is empty: type a file name such as my_merge")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise LoraMergeError(f"{what} '{name}' is an absolute path: give a plain file name")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise LoraMergeError(f"{what} '{name}' contains a path separator: give a plain file name")
    if name in (".", ".."):
        raise LoraMergeError(f"{what} '{name}' is a folder reference ('.' or '..'): give a plain file name")
    bad = sorted({c for c in name if c in _FORBIDDEN or ord(c) < 32})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise LoraMergeError(f"{what} '{name}' contains characters a file name cannot hold: {shown}")
    if name.startswith(".") or name.endswith((".", " ")):
        raise LoraMergeError(f"{what} '{name}' must not start with '.' or end with '.' or a space")
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise LoraMergeError(f"{what} '{name}' is a reserved device name on Windows")
    return name


def output_stem(text: str) -> str:
    """The file name without `.safetensors` (added back by output_path)."""
    name = check_plain_name(text)
    if name.lower().endswith(EXTENSION):
        stem = name[: -len(EXTENSION)]
        if check_plain_name(stem) != stem:  # "x .safetensors": the tag <ljl:x :…> would find x.safetensors
            raise LoraMergeError(f"output name '{name}' has a space before {EXTENSION}: remove it")
        name = stem
    elif "." in name and name.rsplit(".", 1)[1].lower() in ("pt", "ckpt", "bin", "pth"):
        raise LoraMergeError(f"output name '{name}' has extension .{name.rsplit('.', 1)[1]}: outputs are .safetensors")
    return name


def output_path(lora_dir: str | os.PathLike, name: str, subfolder: str = "", *, overwrite: bool = False,
                inputs: list[str | os.PathLike] = ()) -> Path:
    """The path a merge named `name` (in `subfolder`, one level at most) is written to.

    Raises LoraMergeError for a bad name or sub-folder, for an existing file when overwrite is
    off, and always for a file that is one of the inputs.
    """
    root = Path(lora_dir).resolve()
    folder = root
    sub = (subfolder or "").strip()
    if sub:
        folder = root / check_plain_name(sub, "sub-folder")
        check_name_length(folder)
    path = folder / (output_stem(name) + EXTENSION)
    check_name_length(path)
    try:
        if sub and folder.exists() and not folder.is_dir():
            raise LoraMergeError(f"sub-folder '{sub}' exists in {root} but is not a folder")
        if path.resolve().parent != folder.resolve() or root not in path.resolve().parents:
            raise LoraMergeError(f"output '{path}' is not inside the Lora folder {root}")
        for item in inputs:
            if same_file(path, Path(item)):
                raise LoraMergeError(f"output '{path.name}' is one of the inputs: choose another name")
        if path.exists() and not overwrite:
            raise LoraMergeError(f"output '{_shown(root, path)}' already exists: "
                                 "choose another name or allow overwrite")
    except OSError as exc:
        raise LoraMergeError(f"output '{_shown(root, path)}': cannot use this path: {exc.strerror or exc}") from None
    return path


def same_file(a: Path, b: Path) -> bool:
    """True when a and b are one file (or, where either is missing, one path once resolved)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(str(a.resolve())) == os.path.normcase(str(b.resolve()))


def _shown(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
