"""The Lora folders the tab reads from and writes to.

The first folder is where outputs go (the WebUI's `--lora-dir`); the others are only read
(`--lyco-dir-backcompat`, or the shipped examples in the standalone UI).  Files are offered by
their path relative to their folder, with `/` separators.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import LoraMergeError
from ..safetensors_header import show

LORA_EXTENSIONS = (".safetensors",)


@dataclass
class LoraLibrary:
    folders: list[Path]
    _files: dict[str, Path] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.folders:
            raise LoraMergeError("no Lora folder given")
        self.folders = [Path(f).expanduser().resolve() for f in self.folders]

    @classmethod
    def of(cls, *folders: str | os.PathLike | None) -> "LoraLibrary":
        """A library of the given folders, skipping None, empty and repeated ones."""
        seen: list[Path] = []
        for f in folders:
            if f and Path(f).expanduser().resolve() not in seen:
                seen.append(Path(f).expanduser().resolve())
        return cls(seen)

    @property
    def output_dir(self) -> Path:
        return self.folders[0]

    def refresh(self) -> list[str]:
        """Rescan the folders; return the labels, sorted case-insensitively.  A file reached from two
        folders (one inside the other, or through a folder link) is listed once; a file link is a
        file of its own (another name for a LoRA, as the WebUI lists it)."""
        files: dict[str, Path] = {}
        seen: set[str] = set()
        real_folders: dict[Path, str] = {}
        for root in self.folders:
            for path in walk_files(root, LORA_EXTENSIONS, hidden=False):
                if path.parent not in real_folders:
                    real_folders[path.parent] = os.path.realpath(path.parent)
                real = os.path.join(real_folders[path.parent], path.name)
                if real in seen:
                    continue
                seen.add(real)
                label = path.relative_to(root).as_posix()
                if label in files:
                    label = f"{label} ({root.name})"
                files.setdefault(label, path)
        self._files = files
        return self.labels()

    def labels(self) -> list[str]:
        return sorted(self._files, key=str.lower)

    def subfolders(self) -> list[str]:
        """The first-level sub-folders of the output folder ("" is the folder itself)."""
        root = self.output_dir
        if not root.is_dir():
            return [""]
        return [""] + sorted(p.name for p in root.iterdir()
                             if p.is_dir() and not p.name.startswith(".") and self.contains(p))

    def path_of(self, label_or_path: str) -> Path:
        """The file for a label, or for a path inside one of the folders; anything else is refused."""
        text = (label_or_path or "").strip()
        if not text:
            raise LoraMergeError("no LoRA chosen")
        if text in self._files:
            return self._files[text]
        self.refresh()
        if text in self._files:
            return self._files[text]
        try:
            found = self._file_at(text)
        except LoraMergeError:  # a ValueError too: already says what is wrong
            raise
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte…
            reason = getattr(exc, "strerror", None) or str(exc)
            raise LoraMergeError(f"LoRA '{show(text)}' cannot be looked up: {reason}") from None
        if found is None:
            raise LoraMergeError(f"LoRA '{show(text)}' not found in the Lora folders "
                                 f"({', '.join(map(str, self.folders))})")
        return found

    def _file_at(self, text: str) -> Path | None:
        """The LoRA file at a path inside one of the folders (relative to each, or absolute)."""
        candidate = Path(text).expanduser()
        candidates = [candidate] if candidate.is_absolute() else [root / candidate for root in self.folders]
        for c in candidates:
            resolved = c.resolve()
            if not self.contains(resolved):
                raise LoraMergeError(f"'{show(text)}' is outside the Lora folders")
            if resolved.is_file():
                if not resolved.name.lower().endswith(LORA_EXTENSIONS):
                    raise LoraMergeError(f"'{show(text)}' is not a .safetensors file")
                return resolved
        return None

    def contains(self, path: Path) -> bool:
        path = Path(path).resolve()
        return any(path == root or root in path.parents for root in self.folders)

    def label_of(self, path: str | os.PathLike) -> str:
        """The label a file in the folders is listed under (after a rescan)."""
        target = Path(path).resolve()
        for label, p in self._files.items():
            if p.resolve() == target:
                return label
        self.refresh()
        for label, p in self._files.items():
            if p.resolve() == target:
                return label
        return target.name


def walk_files(root: Path, extensions: tuple[str, ...], *, hidden: bool) -> Iterator[Path]:
    """Files under root (sub-folders too, following folder links, each real folder once) whose names
    end with one of extensions (any case); hidden: also names starting with '.'."""
    if not root.is_dir():
        return
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a folder link that loops back: walk it once
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if hidden or not d.startswith("."))
        for fn in filenames:
            if fn.lower().endswith(extensions) and (hidden or not fn.startswith(".")):
                yield Path(dirpath) / fn
