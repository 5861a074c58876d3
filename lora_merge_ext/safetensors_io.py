"""LoRA files in: validated reads and the addnet hashes (writing is in safetensors_write).

read_header / read_safetensors / read_state_dict never raise anything but LoraMergeError on a bad
file. A whole safetensors file is read with one read of its data section, which is hashed on a
second thread while the caller goes on (the provenance of a merge needs that hash), unless the file
declares its hash (input_hash).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import hash_memo
from .byte_buffer import byte_buffer
from .finite_check import find_nonfinite, runs_are_finite
from .pickle_io import read_pickled_state_dict
from .safetensors_header import (DTYPE_SIZES, TensorInfo, fail, open_input_file, parse_header, read_header,
                                 read_header_length, show)
from .safetensors_write import legacy_hash, save_safetensors_atomic

__all__ = ["TensorInfo", "read_header", "read_safetensors", "read_state_dict", "read_tensor_file",
           "read_state_file", "TensorFile", "DataDigest", "tensor_data_sha256", "a1111_hash", "legacy_hash",
           "declared_hash", "input_hash", "save_safetensors_atomic", "find_nonfinite"]

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "F32": torch.float32,
    "I64": torch.int64, "F64": torch.float64,
}
# unsigned 16-64 bit tensors exist from torch 2.3 (the WebUI installs 2.1.2); no LoRA holds them
TORCH_DTYPES.update({name: getattr(torch, attr) for name, attr in (("U16", "uint16"), ("U32", "uint32"),
                                                                   ("U64", "uint64")) if hasattr(torch, attr)})
assert set(TORCH_DTYPES) <= set(DTYPE_SIZES)


def check_dtypes_readable(parsed, path) -> None:
    """Refuse a file holding a dtype this torch has no tensors of (U16/U32/U64 before torch 2.3)."""
    for key, info in parsed.tensors.items():
        if info.dtype not in TORCH_DTYPES:
            raise fail(path, f"tensor {show(key)!r} has dtype {info.dtype}, which needs torch 2.3 or newer "
                             f"(this is torch {torch.__version__})")

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_CHUNK = 1 << 20


# --- reading ---------------------------------------------------------------------------------

class DataDigest:
    """sha256 of a file's data section, computed on a background thread by compute() (which gives
    None for a file it could not read) or remembered from an earlier read of the same file (see
    hash_memo); hexdigest() waits for it."""

    def __init__(self, compute: Callable[[], str], ident: tuple | None = None, read_at_ns: int = 0):
        self._known = hash_memo.recall(ident) if ident else None
        self._thread = None
        if self._known is None:
            self._thread = threading.Thread(target=self._hash, args=(compute, ident, read_at_ns), name="addnet-hash",
                                            daemon=True)
            self._thread.start()

    def _hash(self, compute: Callable[[], str], ident: tuple | None, read_at_ns: int) -> None:
        self._known = compute()
        if ident and self._known is not None:
            hash_memo.remember(ident, self._known, read_at_ns)

    def hexdigest(self) -> str:
        if self._thread is not None:
            self._thread.join()
        return self._known

    def __getstate__(self) -> dict:
        """A copy (pickle, deepcopy) holds the finished hash, not the thread computing it."""
        return {"_known": self.hexdigest(), "_thread": None}


@dataclass
class TensorFile:
    """What a LoRA file holds: tensors as stored, metadata, and (for safetensors) the addnet hash of
    the bytes that were read and the buffer the tensors share, split into runs of one dtype."""
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    digest: DataDigest | None = None
    buffer: torch.Tensor | None = None
    runs: list[tuple[torch.dtype, int, int]] | None = None

    def nonfinite_keys(self) -> list[str]:
        """Keys of the float tensors holding a NaN or an Inf (a clean file is proven clean run by run)."""
        if self.buffer is not None and runs_are_finite(self.buffer, self.runs):
            return []
        return find_nonfinite(self.tensors)


def _tensor_from_bytes(buf: torch.Tensor, info: TensorInfo, offset: int = 0) -> torch.Tensor:
    """A tensor over info.nbytes of the uint8 buffer at offset (shared memory when aligned and little-endian)."""
    dtype = TORCH_DTYPES[info.dtype]
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    raw = buf[offset:offset + info.nbytes]
    size = DTYPE_SIZES[info.dtype]
    if sys.byteorder == "big" and size > 1:  # safetensors stores little-endian
        raw = raw.view(-1, size).flip(1)
    if offset % size or not raw.is_contiguous():  # misaligned in the file: copy into an aligned buffer
        raw = raw.clone()
    return raw.view(dtype).reshape(info.shape)


def _check_bool(path, key: str, info: TensorInfo, buf: torch.Tensor, offset: int) -> None:
    if info.dtype == "BOOL" and info.nbytes and int(buf[offset:offset + info.nbytes].max()) > 1:
        raise fail(path, f"tensor {show(key)!r}: BOOL data holds bytes other than 0 and 1")


def _runs(parsed) -> list[tuple[torch.dtype, int, int]]:
    """(dtype, begin, end) for each stretch of the data section holding tensors of one dtype."""
    runs: list[list] = []
    for info in sorted(parsed.tensors.values(), key=lambda i: i.offsets):
        dtype = TORCH_DTYPES[info.dtype]
        if runs and runs[-1][0] == dtype and runs[-1][2] == info.offsets[0]:
            runs[-1][2] = info.offsets[1]
        else:
            runs.append([dtype, *info.offsets])
    return [tuple(r) for r in runs]


def _read_into(f, buf, path, what: str) -> None:
    try:
        got = f.readinto(buf)
    except OSError as e:
        raise fail(path, f"cannot read file: {e.strerror or e}") from None
    if got != len(buf):
        raise fail(path, f"file is truncated: {what} needs {len(buf)} bytes, got {got}")


def read_tensor_file(path: os.PathLike | str, *, digest: bool = False) -> TensorFile:
    """Every tensor of a validated safetensors file, read with one read of the data section; the
    tensors share that buffer. digest: hash the data section (the addnet hash) on a second thread."""
    parsed = parse_header(path)
    check_dtypes_readable(parsed, path)
    f, size = open_input_file(path)
    with f:
        read_at, before = time.time_ns(), _identity(f, path)
        if size != parsed.file_size:
            raise fail(path, "file changed while it was being read")
        data = byte_buffer(size - parsed.data_start)  # not zero-filled: read over at once
        try:
            f.seek(parsed.data_start)
        except OSError as e:
            raise fail(path, f"cannot read file: {e.strerror or e}") from None
        _read_into(f, memoryview(data.numpy()), path, "the tensor data")
        if _identity(f, path) != before:
            raise fail(path, "file changed while it was being read")
    tensors = {}
    for key, info in parsed.tensors.items():
        _check_bool(path, key, info, data, info.offsets[0])
        tensors[key] = _tensor_from_bytes(data, info, info.offsets[0])
    view = memoryview(data.numpy())
    digest = digest and declared_hash(parsed.metadata) is None  # a merge records the declared one
    hashed = DataDigest(lambda: hashlib.sha256(view).hexdigest(), before, read_at) if digest else None
    return TensorFile(tensors, dict(parsed.metadata), hashed, data, _runs(parsed))


def _identity(f, path) -> tuple:
    try:
        return hash_memo.identity(os.fstat(f.fileno()))
    except OSError as e:
        raise fail(path, f"cannot read file: {e.strerror or e}") from None


def read_safetensors(path: os.PathLike | str, keys: Iterable[str] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a validated safetensors file, tensors as stored (dtype and shape);
    keys limits the read to those tensors."""
    if keys is None:
        whole = read_tensor_file(path)
        return whole.tensors, whole.metadata
    parsed = parse_header(path)
    check_dtypes_readable(parsed, path)
    wanted = list(dict.fromkeys(keys))
    for key in wanted:
        if key not in parsed.tensors:
            raise fail(path, f"has no tensor named {show(key)!r}")
    tensors: dict[str, torch.Tensor] = {}
    f, size = open_input_file(path)
    with f:
        if size != parsed.file_size:
            raise fail(path, "file changed while it was being read")
        for key in sorted(wanted, key=lambda k: parsed.tensors[k].offsets):
            info = parsed.tensors[key]
            buf = torch.empty(info.nbytes, dtype=torch.uint8)
            try:
                f.seek(parsed.data_start + info.offsets[0])
            except OSError as e:
                raise fail(path, f"cannot read file: {e.strerror or e}") from None
            _read_into(f, memoryview(buf.numpy()), path, f"tensor {show(key)!r}")
            _check_bool(path, key, info, buf, 0)
            tensors[key] = _tensor_from_bytes(buf, info)
    return {key: tensors[key] for key in wanted}, dict(parsed.metadata)


def read_state_file(path: os.PathLike | str, *, digest: bool = True) -> TensorFile:
    """A .safetensors file (digest: with its addnet hash under way), or a pickled .pt/.pth/.ckpt/.bin
    loaded with weights_only=True (never runs code from the file; metadata is then empty, no hash)."""
    if os.path.isdir(path):
        raise fail(path, "is a folder, expected a LoRA file")
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return read_tensor_file(path, digest=digest)
    if suffix in PICKLE_SUFFIXES:
        return TensorFile(*read_pickled_state_dict(path))
    raise fail(path, f"unknown file type {show(suffix or '(no extension)', 40)!r}, "
                     f"expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")


def read_state_dict(path: os.PathLike | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from .safetensors or a pickled file (see read_state_file)."""
    loaded = read_state_file(path, digest=False)
    return loaded.tensors, loaded.metadata


# --- hashes ----------------------------------------------------------------------------------

def sha256_of_range(f, start: int, end: int | None = None) -> str:
    """sha256 hex of bytes start..end (None: to the end of the file) of an open binary file, read in
    chunks into one reused buffer; a file that ends early is hashed as far as it goes.  Raises OSError."""
    digest, view = hashlib.sha256(), memoryview(bytearray(_CHUNK))
    f.seek(start)
    while end is None or start < end:
        got = f.readinto(view if end is None else view[:min(_CHUNK, end - start)])
        if not got:
            break
        digest.update(view[:got])
        start += got
    return digest.hexdigest()


def tensor_data_sha256(path: os.PathLike | str) -> str:
    """sha256 hex of the bytes after the safetensors header: the "addnet" hash that A1111 shows for
    LoRA files and kohya stores as sshs_model_hash."""
    f, size = open_input_file(path)
    with f:
        read_at, before = time.time_ns(), _identity(f, path)
        known = hash_memo.recall(before)
        if known is not None:
            return known
        n = read_header_length(f, size, path)
        try:
            hexdigest = sha256_of_range(f, 8 + n)
        except OSError as e:
            raise fail(path, f"cannot read file: {e.strerror or e}") from None
        if _identity(f, path) == before:
            hash_memo.remember(before, hexdigest, read_at)
    return hexdigest


_BOGUS = {hashlib.sha256(b"").hexdigest(), "0" * 64}  # no data at all (some trainers write it), a placeholder


def declared_hash(metadata: dict[str, str]) -> str | None:
    """The file's own sshs_model_hash, as stored (the WebUI shows it and looks the file up by it as
    it is), when it is a sha256 hex digest and not a placeholder (_BOGUS, in either case)."""
    value = metadata.get("sshs_model_hash", "")
    return value if _HEX64.fullmatch(value) and value.lower() not in _BOGUS else None


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def input_hash(lora) -> tuple[str | None, str | None]:
    """(hash, where it comes from) that a merge records for an input (a LoraFile or LazyLora): the
    sshs_model_hash it declares, as the WebUI does ("Lora hashes", the hash lookup), which spares
    hashing the file; else the hash the WebUI computes, of its data (of the whole file when pickled);
    (None, None) for a LoRA made in memory."""
    declared = declared_hash(lora.metadata)
    if declared is not None:
        return declared, "sshs_model_hash"
    computed = lora.file_hash()
    return computed, "data" if computed is not None else None


def a1111_hash(path: os.PathLike | str) -> str:
    """The sha256 A1111 shows for a LoRA file: tensor data only for .safetensors (addnet hash),
    the whole file for pickled formats."""
    if Path(path).suffix.lower() == ".safetensors":
        return tensor_data_sha256(path)
    f, _ = open_input_file(path)
    with f:
        try:
            return sha256_of_range(f, 0)
        except OSError as e:
            raise fail(path, f"cannot read file: {e.strerror or e}") from None
