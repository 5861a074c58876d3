"""Write safetensors files by streaming each tensor's bytes to disk.

The file is what safetensors itself writes (same tensor order, header and padding), but no serialized
copy of the whole file is made: the data section is written straight from the tensors and hashed on
a second thread while it is written, and the header (which carries that hash) goes in last.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
from typing import Callable, Iterable, Mapping

import torch

from .atomic_write import check_target, preallocate, write_all, write_file_atomic
from .safetensors_header import DTYPE_SIZES, fail, show

# safetensors writes tensors by dtype in this order, then by name
WRITE_ORDER = ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
               "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL")
DTYPE_NAMES = {
    getattr(torch, attr): name for attr, name in (
        ("uint64", "U64"), ("int64", "I64"), ("float64", "F64"), ("float32", "F32"), ("uint32", "U32"),
        ("int32", "I32"), ("bfloat16", "BF16"), ("float16", "F16"), ("uint16", "U16"), ("int16", "I16"),
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("int8", "I8"), ("uint8", "U8"), ("bool", "BOOL"))
    if hasattr(torch, attr)  # torch before 2.3 has no uint16/32/64
}
assert set(DTYPE_NAMES.values()) <= set(WRITE_ORDER) == set(DTYPE_SIZES)
_WRITE_RANK = {name: i for i, name in enumerate(WRITE_ORDER)}
LEGACY_HASH_OFFSET, LEGACY_HASH_LENGTH = 0x100000, 0x10000
_SMALL = 1 << 16  # tensors smaller than this are gathered into one write
HASH_PLACEHOLDER = "0" * 64  # a sha256 hex digest's length: the header keeps its size when it is filled in


def _check_metadata(metadata: Mapping[str, str], path) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise fail(path, f"metadata must be a dict of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise fail(path, f"metadata {show(repr(key), 60)} must map a string to a string, "
                             f"got {type(key).__name__} -> {type(value).__name__}")
    return dict(metadata)


def _prepare(tensors: Mapping[str, torch.Tensor], path) -> list[tuple[str, torch.Tensor]]:
    """(name, CPU contiguous tensor) in the order safetensors writes them."""
    out = []
    for key, t in tensors.items():
        if not isinstance(key, str) or key == "__metadata__" or not key:
            raise fail(path, f"tensor name {show(repr(key), 60)} cannot be saved")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.device.type == "meta":
            kind = f"{t.layout}, {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise fail(path, f"{show(key)!r} is not a dense tensor with data ({kind})")
        if t.dtype not in DTYPE_NAMES:
            raise fail(path, f"tensor {show(key)!r} has dtype {str(t.dtype).replace('torch.', '')}, "
                             f"which cannot be saved (cast it to float32, float16 or bfloat16)")
        out.append((key, t.detach().to("cpu").contiguous()))
    out.sort(key=lambda kv: write_position(kv[0], kv[1].dtype))
    return out


def write_position(key: str, dtype: torch.dtype) -> tuple[int, str]:
    """Sort key of a tensor in the data section: safetensors writes by dtype (WRITE_ORDER), then by name."""
    return _WRITE_RANK[DTYPE_NAMES[dtype]], key


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian bytes of a contiguous CPU tensor (a view, no copy on little-endian machines)."""
    if t.numel() == 0:
        return memoryview(b"")
    raw = t.reshape(-1).view(torch.uint8)
    size = t.element_size()
    if sys.byteorder == "big" and size > 1:
        raw = raw.view(-1, size).flip(1).contiguous().view(-1)
    return memoryview(raw.numpy())


def data_views(prepared: list[tuple[str, torch.Tensor]]) -> list[memoryview]:
    """The data section as views, in order.  Tensors that lie back to back in one buffer (a merge's
    factor arena) become one view, so they are written and hashed in large pieces."""
    if sys.byteorder != "little":
        return [tensor_bytes(t) for _, t in prepared]
    spans: list[list] = []  # [storage, first byte, end byte]
    for _, t in prepared:
        if t.numel() == 0:
            continue
        storage = t.untyped_storage()
        begin = t.storage_offset() * t.element_size()
        end = begin + t.numel() * t.element_size()
        last = spans[-1] if spans else None
        if last and last[0].data_ptr() == storage.data_ptr() and last[2] == begin:
            last[2] = end
        else:
            spans.append([storage, begin, end])
    return [memoryview(torch.empty(0, dtype=torch.uint8).set_(storage, begin, (end - begin,)).numpy())
            for storage, begin, end in spans]


def entries_json(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> str:
    """The tensor entries (name, dtype, shape), in write order, as the JSON members of the header
    (dtype, shape, data_offsets), without braces."""
    table: dict[str, object] = {}
    at = 0
    for name, dtype, shape in entries:
        end = at + math.prod(shape) * dtype.itemsize
        table[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [at, end]}
        at = end
    return json.dumps(table, separators=(",", ":"), ensure_ascii=False)[1:-1]


def header_bytes(entries: str, metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length and the JSON header (metadata first, then the entries), padded with spaces to
    a multiple of 8 as safetensors does."""
    members = [entries] if entries else []
    if metadata is not None:
        members.insert(0, '"__metadata__":' + json.dumps(metadata, separators=(",", ":"), ensure_ascii=False))
    text = ("{" + ",".join(members) + "}").encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def legacy_hash(blob: bytes) -> str:
    """kohya's sshs_legacy_hash of a serialized file: first 8 hex of sha256 of 64 KiB at offset 1 MiB
    (sha256 of nothing for files under 1 MiB, as kohya computes it)."""
    return hashlib.sha256(blob[LEGACY_HASH_OFFSET:LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]


def _byte_range(parts: Iterable[memoryview], start: int, stop: int) -> bytes:
    """Bytes start..stop of the concatenation of parts (only the overlapping slices are copied)."""
    out, at = [], 0
    for part in parts:
        end = at + len(part)
        if end > start and at < stop:
            out.append(bytes(part[max(start - at, 0):min(stop, end) - at]))
        if end >= stop:
            break
        at = end
    return b"".join(out)


def kohya_legacy_hash(entries: str, read_data: Callable[[int, int], bytes], metadata: dict[str, str]) -> str:
    """sshs_legacy_hash as kohya computes it: on the file these entries make with only the ss_*
    metadata.  read_data(start, stop): those bytes of the data section (fewer past its end)."""
    head = header_bytes(entries, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    start, stop = LEGACY_HASH_OFFSET, LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH
    window = head[start:stop] + read_data(max(start - len(head), 0), max(stop - len(head), 0))
    return hashlib.sha256(window).hexdigest()[:8]


def _write_data(fd: int, views: list[memoryview]) -> None:
    """Write the views in order; small ones are gathered so that each write carries at least 64 KiB."""
    pending = bytearray()
    for view in views:
        if len(view) >= _SMALL:
            if pending:
                write_all(fd, pending)
                pending = bytearray()
            write_all(fd, view)
            continue
        pending += view
        if len(pending) >= _SMALL:
            write_all(fd, pending)
            pending = bytearray()
    if pending:
        write_all(fd, pending)


def _hash_views(views: list[memoryview], digest) -> None:
    for view in views:
        digest.update(view)


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                            path: os.PathLike | str, *, overwrite: bool = False, protect: Iterable = (),
                            hashed=None) -> str:
    """Write tensors (as given: cast them first) and metadata to path atomically, adding
    sshs_model_hash (sha256 of the data section of the file written) and sshs_legacy_hash (kohya's).
    Refuses inputs in protect (by resolved path or same file), existing files unless overwrite,
    missing folders. hashed: a hash worked out ahead (factor_arena.ArenaHash), used when it
    covers exactly the data written. Returns sshs_model_hash."""
    protect = list(protect)
    meta = _check_metadata(metadata, path)
    check_target(path, overwrite=overwrite, protect=protect)
    prepared = _prepare(tensors, path)
    views = data_views(prepared)
    entries = entries_json([(key, t.dtype, tuple(t.shape)) for key, t in prepared])
    meta["sshs_legacy_hash"] = kohya_legacy_hash(entries, lambda start, stop: _byte_range(views, start, stop), meta)
    meta["sshs_model_hash"] = HASH_PLACEHOLDER
    head_length = len(header_bytes(entries, meta))
    digest = hashlib.sha256()

    ahead = hashed if hashed is not None and hashed.covers(views) else None

    def fill(fd: int) -> None:
        preallocate(fd, head_length + sum(view.nbytes for view in views))
        hasher = None
        if ahead is None:
            hasher = threading.Thread(target=_hash_views, args=(views, digest), name="sshs-hash", daemon=True)
            hasher.start()
        try:
            os.lseek(fd, head_length, os.SEEK_SET)
            _write_data(fd, views)
        finally:
            if hasher:
                hasher.join()
        meta["sshs_model_hash"] = ahead.hexdigest() if ahead else digest.hexdigest()
        head = header_bytes(entries, meta)
        assert len(head) == head_length
        os.lseek(fd, 0, os.SEEK_SET)
        write_all(fd, head)

    write_file_atomic(path, fill, overwrite=overwrite, protect=protect)
    return meta["sshs_model_hash"]
