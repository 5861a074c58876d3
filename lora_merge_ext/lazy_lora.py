"""A .safetensors LoRA as places in its file rather than tensors: what a streamed concat
(concat_stream) needs to plan its output, then read each factor when its turn comes.

open_lazy validates what load_lora validates from the header alone (key forms, names, shapes,
family, alphas); the factors' values (NaN, Inf) are left to the reader.  A file it cannot
describe this way (not safetensors, Tucker, other dtypes) gives None: load it whole instead.
"""
from __future__ import annotations

import math
import os
import struct
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from . import hash_memo
from .bundled import is_bundled
from .errors import LoraMergeError
from .family import detect_family
from .loading import alpha_value, check_factor_shapes, group_keys, kohya_name
from .lora_file import FactorShapes
from .safetensors_header import TensorInfo, open_input_file, parse_open_header
from .safetensors_io import TORCH_DTYPES, DataDigest, declared_hash, sha256_of_range

FACTOR_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class Unstreamable(Exception):
    """This input cannot be streamed after all (non-finite values, or the file changed while read):
    merge it the ordinary way, which reports the problem as load_lora does."""


@dataclass(frozen=True)
class FactorSource:
    """A factor's dtype and shape, and where its bytes lie in its file (offset -1: in no file)."""
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = -1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class LazyModule(FactorShapes):
    """A module whose factors are still in the file (shapes normalised as load_lora does: up is
    4-D exactly when down is)."""
    name: str
    down: FactorSource
    up: FactorSource
    alpha: float | None = None


@dataclass
class LazyLora:
    """A LoRA file held open: its modules, metadata, family, identity (hash_memo.identity, taken at
    read_at_ns) and where its data section lies."""
    path: str
    modules: dict[str, LazyModule]
    metadata: dict[str, str]
    family: str
    fd: int
    ident: tuple
    read_at_ns: int
    data_range: tuple[int, int]
    digest: DataDigest | None = None

    def start_hash(self) -> None:
        """Start computing the addnet hash on a thread of its own (unless it is remembered, or the
        file declares one: see safetensors_io.input_hash)."""
        if declared_hash(self.metadata) is not None:
            return
        self.digest = DataDigest(partial(_sha256_of_file, self.path, self.ident, *self.data_range), self.ident,
                                 self.read_at_ns)

    def file_hash(self) -> str | None:
        """The addnet hash of the file (None when it could not be read to the end); start_hash first
        (for a file that declares its hash, this computes it now)."""
        if self.digest is None:
            return _sha256_of_file(self.path, self.ident, *self.data_range)
        return self.digest.hexdigest()

    def read_into(self, factor: FactorSource, out: torch.Tensor) -> torch.Tensor:
        """Read a factor's bytes into the uint8 tensor out (its size); returns them as a 2-D float
        matrix (rows: the first dimension).  Raises Unstreamable on a short read.  NaN and Inf are
        not looked for here (a concat checks what it writes: a NaN or Inf read ends up there)."""
        _pread_exactly(self.fd, memoryview(out.numpy()), factor.offset)
        return out.view(factor.dtype).reshape(factor.shape[0], -1)

    def unchanged(self) -> bool:
        """True while the file has the identity it had when opened (nothing wrote to it)."""
        try:
            return hash_memo.identity(os.fstat(self.fd)) == self.ident
        except OSError:
            return False

    def close(self) -> None:
        """Close the file (a hash under way reads through a descriptor of its own and finishes)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_NEEDS_LOAD = "needs load_lora"  # remembered for a file open_lazy cannot describe
_described = hash_memo.FileMemo(64)  # identity → (family, modules, metadata, data range), or _NEEDS_LOAD


def open_lazy(path: str | os.PathLike) -> LazyLora | None:
    """Open a .safetensors LoRA as a LazyLora, raising LoraMergeError as load_lora does for a bad
    header or shapes; None when the file needs load_lora.  The description of a file opened before
    and unchanged since is remembered (hash_memo), not read again."""
    path = os.fspath(path)
    if sys.byteorder != "little" or Path(path).suffix.lower() != ".safetensors":
        return None
    f, size = open_input_file(path)
    with f:
        read_at, ident = time.time_ns(), hash_memo.identity(os.fstat(f.fileno()))
        described = _described.recall(ident)
        if described is None:
            parsed = parse_open_header(f, size, path)
            found = _modules(path, parsed, f.fileno())
            described = _NEEDS_LOAD if found is None else (*found, parsed.metadata,
                                                             (parsed.data_start, parsed.file_size))
            _described.remember(ident, described, read_at)
        if described is _NEEDS_LOAD:
            return None
        fd = os.dup(f.fileno())
    family, modules, metadata, data_range = described
    return LazyLora(path, dict(modules), dict(metadata), family, fd, ident, read_at, data_range)


def _modules(path: str, parsed, fd: int) -> tuple[str, dict[str, LazyModule]] | None:
    if any(map(is_bundled, parsed.tensors)):
        return None  # bundled embeddings: load_lora keeps them
    if any(info.dtype not in TORCH_DTYPES for info in parsed.tensors.values()):
        return None  # load_lora says which
    groups = group_keys(parsed.tensors, path)
    family = detect_family({m: g["down"] for m, g in groups.items() if "down" in g}, parsed.metadata)
    modules: dict[str, LazyModule] = {}
    for raw, roles in groups.items():
        name = kohya_name(raw, family)
        if name in modules or "mid" in roles or "down" not in roles or "up" not in roles:
            return None  # load_lora folds Tucker cores and words these errors
        down, up = roles["down"], roles["up"]
        if down.dtype not in FACTOR_DTYPES or up.dtype not in FACTOR_DTYPES:
            return None
        check_factor_shapes(f"{path}: module {name}", down.shape, up.shape)
        up_shape = up.shape[:2] + (1, 1) if len(down.shape) == 4 else up.shape[:2]
        alpha = _alpha(path, name, roles.get("alpha"), parsed.data_start, fd)
        if alpha is not None and not math.isfinite(alpha):
            return None
        modules[name] = LazyModule(name, _source(down, down.shape, parsed.data_start),
                                   _source(up, up_shape, parsed.data_start), alpha)
    return family, modules


def _source(info: TensorInfo, shape: tuple[int, ...], data_start: int) -> FactorSource:
    return FactorSource(FACTOR_DTYPES[info.dtype], tuple(shape), data_start + info.offsets[0])


_SCALAR_FORMATS = {"F32": "<f", "F16": "<e", "F64": "<d"}  # an alpha's usual dtypes, read without torch


def _alpha(path: str, name: str, info: TensorInfo | None, data_start: int, fd: int) -> float | None:
    if info is None:
        return None
    raw = bytearray(info.nbytes)
    _pread_exactly(fd, memoryview(raw), data_start + info.offsets[0], path)
    if math.prod(info.shape) == 1 and (info.dtype in _SCALAR_FORMATS or info.dtype == "BF16"):
        if info.dtype == "BF16":  # the upper half of a float32
            return struct.unpack("<f", b"\0\0" + bytes(raw))[0]
        return struct.unpack(_SCALAR_FORMATS[info.dtype], raw)[0]
    values = torch.frombuffer(raw, dtype=TORCH_DTYPES[info.dtype]) if raw else torch.empty(0)
    return alpha_value(f"{path}: module {name}", values.reshape(info.shape))


def _pread_exactly(fd: int, view: memoryview, offset: int, path: str | None = None) -> None:
    """Fill view from the file at offset.  A short read (the file shrank while in use) or a read
    error: LoraMergeError naming path when given, else Unstreamable (the ordinary merge then reads
    the file again and reports what it finds)."""
    while view:
        try:
            got = os.preadv(fd, [view], offset)
            reason = "file changed while it was being read"
        except OSError as e:
            got, reason = 0, f"cannot read file: {e.strerror or e}"
        if got <= 0:
            if path is not None:
                raise LoraMergeError(f"{path}: {reason}")
            raise Unstreamable(reason)
        view, offset = view[got:], offset + got


def _sha256_of_file(path: str, ident: tuple, start: int, end: int) -> str | None:
    """sha256 of bytes start..end of the file at path, read through a descriptor of its own; None
    when that file is not (or no longer) the one opened (ident), or cannot be read."""
    try:
        with open(path, "rb", buffering=0) as f:
            if hash_memo.identity(os.fstat(f.fileno())) != ident:
                return None
            hexdigest = sha256_of_range(f, start, end)
            return hexdigest if hash_memo.identity(os.fstat(f.fileno())) == ident else None
    except OSError:
        return None
