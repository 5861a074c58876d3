"""LoRA files in and out: validated reads, the addnet hashes, atomic writes with the hashes embedded.

read_header / read_safetensors / read_state_dict never raise anything but LoraMergeError on a bad
file; save_safetensors_atomic never leaves a half-written file or a temporary file behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping

import safetensors.torch
import torch

from .atomic_write import check_target, write_bytes_atomic
from .errors import LoraMergeError
from .pickle_io import read_pickled_state_dict
from .safetensors_header import (DTYPE_SIZES, TensorInfo, fail, open_input_file, parse_header, read_header,
                                 read_header_length, show)

__all__ = ["TensorInfo", "read_header", "read_safetensors", "read_state_dict", "tensor_data_sha256",
           "a1111_hash", "legacy_hash", "save_safetensors_atomic", "find_nonfinite"]

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16,
    "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}
assert set(TORCH_DTYPES) == set(DTYPE_SIZES)

_SAVABLE = frozenset(TORCH_DTYPES.values())
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
LEGACY_HASH_OFFSET, LEGACY_HASH_LENGTH = 0x100000, 0x10000
_CHUNK = 1 << 20


# --- reading ---------------------------------------------------------------------------------

def _tensor_from_bytes(buf: bytearray, info: TensorInfo) -> torch.Tensor:
    dtype = TORCH_DTYPES[info.dtype]
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    size = DTYPE_SIZES[info.dtype]
    if sys.byteorder == "big" and size > 1:  # safetensors stores little-endian
        raw = torch.frombuffer(buf, dtype=torch.uint8).view(-1, size).flip(1).contiguous()
        return raw.view(dtype).reshape(info.shape)
    return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)


def read_safetensors(path: os.PathLike | str, keys: Iterable[str] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a validated safetensors file, tensors as stored (dtype and shape);
    keys limits the read to those tensors."""
    parsed = parse_header(path)
    wanted = list(parsed.tensors) if keys is None else list(dict.fromkeys(keys))
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
            buf = bytearray(info.nbytes)
            try:
                f.seek(parsed.data_start + info.offsets[0])
                got = f.readinto(buf)
            except OSError as e:
                raise fail(path, f"cannot read file: {e.strerror or e}") from None
            if got != info.nbytes:
                raise fail(path, f"file is truncated: tensor {show(key)!r} needs {info.nbytes} bytes, got {got}")
            if info.dtype == "BOOL" and buf and max(buf) > 1:
                raise fail(path, f"tensor {show(key)!r}: BOOL data holds bytes other than 0 and 1")
            tensors[key] = _tensor_from_bytes(buf, info)
    return {key: tensors[key] for key in wanted}, dict(parsed.metadata)


def read_state_dict(path: os.PathLike | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from .safetensors, or from a pickled .pt/.pth/.ckpt/.bin loaded with
    weights_only=True (never runs code from the file; metadata is then empty)."""
    if os.path.isdir(path):
        raise fail(path, "is a folder, expected a LoRA file")
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickled_state_dict(path)
    raise fail(path, f"unknown file type {show(suffix or '(no extension)', 40)!r}, "
                     f"expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")


def find_nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating-point tensors that hold a NaN or an infinity."""
    bad = []
    for key, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            t = t.float()
        if not bool(torch.isfinite(t).all()):
            bad.append(key)
    return bad


# --- hashes ----------------------------------------------------------------------------------

def tensor_data_sha256(path: os.PathLike | str) -> str:
    """sha256 hex of the bytes after the safetensors header: the "addnet" hash that A1111 shows for
    LoRA files and kohya stores as sshs_model_hash."""
    f, size = open_input_file(path)
    with f:
        n = read_header_length(f, size, path)
        digest = hashlib.sha256()
        try:
            f.seek(8 + n)
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        except OSError as e:
            raise fail(path, f"cannot read file: {e.strerror or e}") from None
    return digest.hexdigest()


def a1111_hash(path: os.PathLike | str) -> str:
    """The sha256 A1111 shows for a LoRA file: tensor data only for .safetensors (addnet hash),
    the whole file for pickled formats."""
    if Path(path).suffix.lower() == ".safetensors":
        return tensor_data_sha256(path)
    f, _ = open_input_file(path)
    digest = hashlib.sha256()
    with f:
        try:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        except OSError as e:
            raise fail(path, f"cannot read file: {e.strerror or e}") from None
    return digest.hexdigest()


def _data_section(blob: bytes) -> memoryview:
    n = int.from_bytes(blob[:8], "little")
    return memoryview(blob)[8 + n:]


def legacy_hash(blob: bytes) -> str:
    """kohya's sshs_legacy_hash of a serialized file: first 8 hex of sha256 of 64 KiB at offset 1 MiB
    (sha256 of nothing for files under 1 MiB, as kohya computes it)."""
    return hashlib.sha256(blob[LEGACY_HASH_OFFSET:LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]


# --- writing ---------------------------------------------------------------------------------

def _check_metadata(metadata: Mapping[str, str], path) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise fail(path, f"metadata must be a dict of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise fail(path, f"metadata {show(repr(key), 60)} must map a string to a string, "
                             f"got {type(key).__name__} -> {type(value).__name__}")
    return dict(metadata)


def _prepare_tensors(tensors: Mapping[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, t in tensors.items():
        if not isinstance(key, str) or key == "__metadata__" or not key:
            raise fail(path, f"tensor name {show(repr(key), 60)} cannot be saved")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type == "meta":
            kind = f"{t.layout}, {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise fail(path, f"{show(key)!r} is not a dense tensor with data ({kind})")
        if t.dtype not in _SAVABLE:
            raise fail(path, f"tensor {show(key)!r} has dtype {str(t.dtype).replace('torch.', '')}, "
                             f"which cannot be saved (cast it to float32, float16 or bfloat16)")
        t = t.detach().to("cpu").contiguous()
        pointer = t.untyped_storage().data_ptr()
        if t.numel() and pointer in storages:
            t = t.clone()
        if t.numel():
            storages.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path) -> bytes:
    try:
        return safetensors.torch.save(tensors, metadata)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise fail(path, f"cannot serialize the tensors: {show(str(e).strip().splitlines()[0], 160)}") from None


def _header_with_metadata(blob: bytes, metadata: dict[str, str]) -> bytes:
    """The 8-byte length and JSON header of a serialized blob, with its __metadata__ replaced; padded
    with spaces so the data section stays 8-byte aligned, as safetensors writes it."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(bytes(blob[8:8 + n]))
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                            path: os.PathLike | str, *, overwrite: bool = False, protect: Iterable = ()) -> str:
    """Write tensors (as given: cast them first) and metadata to path atomically, adding
    sshs_model_hash (sha256 of the data section of the file written) and sshs_legacy_hash (kohya's).
    Refuses inputs in protect (by resolved path or same file), existing files unless overwrite,
    missing folders. Returns sshs_model_hash."""
    protect = list(protect)
    meta = _check_metadata(metadata, path)
    check_target(path, overwrite=overwrite, protect=protect)
    prepared = _prepare_tensors(tensors, path)
    # kohya hashes a blob holding only the ss_* metadata; the data section does not depend on metadata,
    # so the file is that data section behind a header that carries all the metadata and the hashes
    hash_blob = _serialize(prepared, {k: v for k, v in meta.items() if k.startswith("ss_")}, path)
    data = _data_section(hash_blob)
    model_hash = hashlib.sha256(data).hexdigest()
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hash, legacy_hash(hash_blob)
    write_bytes_atomic(path, [_header_with_metadata(hash_blob, meta), data], overwrite=overwrite, protect=protect)
    return model_hash
