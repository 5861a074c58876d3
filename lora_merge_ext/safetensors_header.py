"""Read and validate a safetensors header without touching the tensor data.

A safetensors file is: 8 bytes (little-endian u64) N, N bytes of UTF-8 JSON, then the tensor data.
The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the start of the data) and may hold "__metadata__": {str: str}. A valid file's tensors tile the
data section exactly: sorted by offset, each begins where the previous one ends, and the last ends
at the end of the file. Everything here refuses a bad file with one LoraMergeError line.
"""
from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import LoraMergeError

MAX_HEADER_BYTES = 100_000_000  # the same cap the safetensors library applies
MAX_DIM = 2**63 - 1
MAX_NDIM = 64  # far above any real tensor; keeps hostile shapes from costing time

# bytes per element of every dtype string we can turn into a torch tensor
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype string, shape, and [begin, end) byte offsets within the data section."""
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass(frozen=True)
class ParsedHeader:
    """A validated header plus where the data section starts in the file."""
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def show(text: object, limit: int = 120) -> str:
    """A value made safe for a one-line message: control characters escaped, long text cut."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def fail(path: os.PathLike | str, problem: str) -> LoraMergeError:
    return LoraMergeError(f"{show(path, 400)}: {problem}")


def open_input_file(path: os.PathLike | str) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; returns (file, size). Refuses missing files, folders,
    pipes and devices, and unreadable files, with one line each."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail(path, "file not found") from None
    except NotADirectoryError:
        raise fail(path, "file not found (a part of the path is not a folder)") from None
    except OSError as e:
        raise fail(path, f"cannot read file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise fail(path, "is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise fail(path, "is not a regular file (pipe, device or socket)")
    try:
        # O_NONBLOCK: should the path be swapped for a pipe after the check, opening does not hang
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise fail(path, f"cannot read file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(path, "is not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_exact(f: BinaryIO, n: int, path, what: str) -> bytes:
    try:
        data = f.read(n)
    except OSError as e:
        raise fail(path, f"cannot read file: {e.strerror or e}") from None
    if len(data) != n:
        raise fail(path, f"file is truncated: {what} needs {n} bytes, only {len(data)} left")
    return data


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise _HeaderProblem(f"the header names {show(key)!r} twice")
            seen.add(key)
    return out


def _no_constants(name: str):
    raise _HeaderProblem(f"the header contains {name}, which is not JSON")


class _HeaderProblem(Exception):
    pass


def _check_text(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _HeaderProblem(f"{what} {show(value)!r} is not valid Unicode (lone surrogate escape)") from None


def _json_type(x: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    return {str: "string", int: "number", float: "number", list: "array", dict: "object"}.get(type(x), type(x).__name__)


def _json_text(x: object, limit: int = 60) -> str:
    if isinstance(x, list) and len(x) > 16:  # a hostile header may hold millions of items
        return _json_text(x[:16], limit)[:-1] + ", ...]"
    try:
        return show(json.dumps(x, ensure_ascii=False), limit)
    except (TypeError, ValueError):
        return show(x, limit)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_json(raw: bytes, path) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(path, f"not a safetensors file: header is not UTF-8 (byte {e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _HeaderProblem as e:
        raise fail(path, f"not a safetensors file: {e}") from None
    except RecursionError:
        raise fail(path, "not a safetensors file: header JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer with too many digits
        if isinstance(e, json.JSONDecodeError):
            detail = f"{e.msg}, byte {e.pos}"
        else:
            detail = str(e).split(":")[0]
        raise fail(path, f"not a safetensors file: header is not JSON ({show(detail, 80)})") from None
    if not isinstance(header, dict):
        raise fail(path, f"not a safetensors file: header is a JSON {_json_type(header)}, expected an object")
    return header


def _parse_metadata(value: object, path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(path, f"bad __metadata__: expected an object of strings, got {_json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise fail(path, f"bad __metadata__: value of {show(key)!r} is {_json_type(item)}, expected a string")
        try:
            _check_text(key, "__metadata__ key")
            _check_text(item, f"__metadata__ value of {show(key)!r}")
        except _HeaderProblem as e:
            raise fail(path, str(e)) from None
    return dict(value)


class _Label:
    """'tensor NAME' for messages, made safe only when a message is actually built."""

    def __init__(self, name: str):
        self.name = name

    def __format__(self, spec: str) -> str:
        return f"tensor {show(self.name)!r}"


def _parse_entry(name: str, entry: object, path) -> TensorInfo:
    """One header entry, checked; a well-formed entry takes the short way, anything else the long one,
    which names what is wrong."""
    if type(entry) is dict and len(entry) == 3 and name.isascii():
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (type(dtype) is str and dtype in DTYPE_SIZES and type(shape) is list and len(shape) <= MAX_NDIM
                and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)
                and type(offsets) is list and len(offsets) == 2 and type(offsets[0]) is int
                and type(offsets[1]) is int and 0 <= offsets[0] <= offsets[1]
                and offsets[1] - offsets[0] == math.prod(shape) * DTYPE_SIZES[dtype]):
            return TensorInfo(dtype, tuple(shape), (offsets[0], offsets[1]))
    label = _Label(name)
    try:
        _check_text(name, "tensor name")
    except _HeaderProblem as e:
        raise fail(path, str(e)) from None
    if not isinstance(entry, dict):
        raise fail(path, f"{label}: expected an object with dtype, shape and data_offsets, got {_json_type(entry)}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise fail(path, f"{label}: missing {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise fail(path, f"{label}: dtype is {_json_type(dtype)}, expected a string")
    if dtype not in DTYPE_SIZES:
        raise fail(path, f"{label}: unknown or unsupported dtype {show(dtype, 40)!r} "
                         f"(expected one of {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise fail(path, f"{label}: shape {_json_text(shape)} is not a list of non-negative integers")
    if len(shape) > MAX_NDIM:
        raise fail(path, f"{label}: shape has {len(shape)} dimensions, at most {MAX_NDIM} are supported")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or offsets[0] < 0 or offsets[0] > offsets[1]):
        raise fail(path, f"{label}: data_offsets {_json_text(offsets)} is not [begin, end] with 0 <= begin <= end")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise fail(path, f"{label}: data_offsets span {offsets[1] - offsets[0]} bytes, "
                         f"but shape {shape} of {dtype} needs {expected}")
    return TensorInfo(dtype, tuple(shape), (offsets[0], offsets[1]))


def _check_layout(tensors: dict[str, TensorInfo], data_size: int, path) -> None:
    """Tensors must tile the data section: no overlap, no gap, nothing past the end, nothing left over."""
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].offsets):
        begin, end = info.offsets
        if end > data_size:
            raise fail(path, f"tensor {show(name)!r}: data_offsets [{begin}, {end}] run past the end of the "
                             f"data ({data_size} bytes; file truncated?)")
        if begin < position:
            raise fail(path, f"tensor {show(name)!r}: data_offsets [{begin}, {end}] overlap tensor {show(previous)!r}")
        if begin > position:
            raise fail(path, f"bytes {position}..{begin} of the data are not covered by any tensor "
                             f"(gap before tensor {show(name)!r})")
        position, previous = end, name
    if position != data_size:
        raise fail(path, f"the last {data_size - position} bytes of the data are not covered by any tensor "
                         f"(tensors end at {position}, data is {data_size} bytes)")


def read_header_length(f: BinaryIO, size: int, path) -> int:
    """The header length N from the first 8 bytes, checked against the file size and the cap."""
    if size == 0:
        raise fail(path, "file is empty")
    if size < 8:
        raise fail(path, f"file is truncated: {size} bytes, a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(read_exact(f, 8, path, "the header length"), "little")
    if n > MAX_HEADER_BYTES:
        raise fail(path, f"not a safetensors file: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n > size - 8:
        raise fail(path, f"not a safetensors file or truncated: header length {n} is larger than the "
                         f"{size - 8} bytes after it")
    return n


def parse_header(path: os.PathLike | str) -> ParsedHeader:
    """Validate the whole header of a safetensors file; reads only the first 8 + N bytes."""
    f, size = open_input_file(path)
    with f:
        return parse_open_header(f, size, path)


def parse_open_header(f: BinaryIO, size: int, path) -> ParsedHeader:
    """parse_header of a file already open (f at its start, size bytes; path for messages)."""
    n = read_header_length(f, size, path)
    if n < 2:
        raise fail(path, f"not a safetensors file: header length {n} is too short for a JSON object")
    raw = read_exact(f, n, path, "the header")
    header = _parse_json(raw, path)
    metadata = _parse_metadata(header.get("__metadata__"), path)
    tensors = {name: _parse_entry(name, entry, path) for name, entry in header.items() if name != "__metadata__"}
    _check_layout(tensors, size - 8 - n, path)
    return ParsedHeader(tensors, metadata, 8 + n, size)


def read_header(path: os.PathLike | str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor infos, metadata) of a safetensors file, validated, without reading tensor data."""
    parsed = parse_header(Path(path))
    return parsed.tensors, parsed.metadata
