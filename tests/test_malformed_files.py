"""Hardening: LoRA files from strangers. Every malformed file is refused with one LoraMergeError line
that names the file and the problem; nothing else is ever raised, nothing is executed or allocated
on the say-so of the file. Mutated copies of valid files either read back with the declared shapes
(and agree bit for bit with the safetensors library) or are refused the same way.
"""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_factory import make_lora, make_tensors
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.safetensors_header import MAX_HEADER_BYTES
from lora_merge_ext.safetensors_io import read_header, read_safetensors, read_state_dict, tensor_data_sha256

ONE_MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def blob(header, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors-shaped byte string: 8-byte length, header (dict → JSON, or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def one(e, data=b"\0" * 4):
    return blob({"w": e}, data)


def expect_refusal(path: Path, expected: str, readers=(read_header, read_safetensors, read_state_dict)):
    for reader in readers:
        with pytest.raises(LoraMergeError) as info:
            reader(path)
        message = str(info.value)
        assert "\n" not in message, message
        assert path.name in message, message
        assert expected.lower() in message.lower(), message


# --- malformed byte strings: (id, bytes, words the message must contain) -------------------------

BYTE_CASES = [
    ("empty-file", b"", "empty"),
    ("one-byte", b"\x05", "truncated"),
    ("seven-bytes", b"\x02\0\0\0\0\0\0", "truncated"),
    ("length-only-zero", struct.pack("<Q", 0), "too short"),
    ("length-one", blob(b"{", b""), "too short"),
    ("length-beyond-file", blob(b"{}", length=1000), "larger than"),
    ("length-2^64-1", struct.pack("<Q", 2**64 - 1) + b"{}", "exceeds"),
    ("length-500MB-claimed", struct.pack("<Q", 500_000_000) + b"{}", "exceeds"),
    ("length-cuts-json", blob(json.dumps({"w": entry()}).encode(), b"\0" * 4, length=10), "not json"),
    ("header-not-utf8", blob(b'{"\xff\xfe": 1}'), "utf-8"),
    ("header-latin1-name", blob('{"caf\xe9": {}}'.encode("latin-1")), "utf-8"),
    ("header-not-json", blob(b"hello world!"), "not json"),
    ("header-truncated-json", blob(b'{"w": {"dtype": "F32"'), "not json"),
    ("header-json-array", blob(b"[1, 2, 3]"), "expected an object"),
    ("header-json-string", blob(b'"abc"'), "expected an object"),
    ("header-json-number", blob(b"12345678"), "expected an object"),
    ("header-json-null", blob(b"null"), "expected an object"),
    ("header-nested-deeply", blob(b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), "nested too deeply"),
    ("header-nan-literal", blob(b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', b"\0" * 4), "not json"),
    ("header-infinity-literal", blob(b'{"w": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}'), "not json"),
    ("header-nul-padding", blob(json.dumps({"w": entry()}).encode() + b"\0\0\0", b"\0" * 4), "not json"),
    ("header-5000-digit-int", blob(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}"), "not json"),
    ("duplicate-tensor-name", blob(b'{"w": ' + json.dumps(entry()).encode() + b', "w": '
                                   + json.dumps(entry(offsets=(4, 8))).encode() + b"}", b"\0" * 8), "twice"),
    ("duplicate-metadata", blob(b'{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"}}'), "twice"),
    ("lone-surrogate-name", blob(b'{"\\ud800": ' + json.dumps(entry()).encode() + b"}", b"\0" * 4), "surrogate"),
    ("lone-surrogate-metadata", blob(b'{"__metadata__": {"k": "\\udfff"}}'), "surrogate"),
    ("metadata-list", blob({"__metadata__": ["a", "b"]}), "__metadata__"),
    ("metadata-string", blob({"__metadata__": "a=b"}), "__metadata__"),
    ("metadata-int-value", blob({"__metadata__": {"ss_network_dim": 4}}), "ss_network_dim"),
    ("metadata-object-value", blob({"__metadata__": {"ss_tag_frequency": {"a": 1}}}), "ss_tag_frequency"),
    ("metadata-null-value", blob({"__metadata__": {"ss_v2": None}}), "ss_v2"),
    ("metadata-bool-value", blob({"__metadata__": {"ss_v2": True}}), "ss_v2"),
    ("entry-list", blob({"w": [1, 2, 3]}), "expected an object"),
    ("entry-string", blob({"w": "F32"}), "expected an object"),
    ("entry-null", blob({"w": None}), "expected an object"),
    ("missing-dtype", one({"shape": [1], "data_offsets": [0, 4]}), "missing dtype"),
    ("missing-shape", one({"dtype": "F32", "data_offsets": [0, 4]}), "missing shape"),
    ("missing-offsets", one({"dtype": "F32", "shape": [1]}), "missing data_offsets"),
    ("missing-everything", one({}), "missing dtype, shape, data_offsets"),
    ("dtype-unknown", one(entry(dtype="F128")), "unknown"),
    ("dtype-lowercase", one(entry(dtype="f32")), "unknown"),
    ("dtype-torch-name", one(entry(dtype="float32")), "unknown"),
    ("dtype-sub-byte-F4", one(entry(dtype="F4", shape=(2,), offsets=(0, 1)), b"\0"), "unknown"),
    ("dtype-number", one(entry(dtype=4)), "dtype is number"),
    ("dtype-null", one(entry(dtype=None)), "dtype is null"),
    ("shape-negative", one(entry(shape=(-1,))), "non-negative"),
    ("shape-negative-pair", one(entry(shape=(-2, -2)), b"\0" * 16), "non-negative"),
    ("shape-float", one(entry(shape=(1.0,))), "non-negative integers"),
    ("shape-string", one({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}), "non-negative integers"),
    ("shape-bool", one(entry(shape=(True,))), "non-negative integers"),
    ("shape-int", one({"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}), "non-negative integers"),
    ("shape-nested", one(entry(shape=([1],))), "non-negative integers"),
    ("shape-null", one({"dtype": "F32", "shape": None, "data_offsets": [0, 4]}), "non-negative integers"),
    ("shape-dim-2^70", one(entry(shape=(2**70, 0))), "non-negative integers"),
    ("shape-65-dims", one(entry(shape=(1,) * 65)), "dimensions"),
    ("offsets-three", one(entry(offsets=(0, 4, 8))), "data_offsets"),
    ("offsets-one", one(entry(offsets=(4,))), "data_offsets"),
    ("offsets-empty", one(entry(offsets=())), "data_offsets"),
    ("offsets-reversed", one(entry(offsets=(4, 0))), "begin <= end"),
    ("offsets-negative", one(entry(offsets=(-4, 0))), "begin <= end"),
    ("offsets-float", one(entry(offsets=(0.0, 4.0))), "data_offsets"),
    ("offsets-string", one(entry(offsets=("0", "4"))), "data_offsets"),
    ("offsets-bool", one(entry(offsets=(False, True)), b"\0"), "data_offsets"),
    ("offsets-object", one({"dtype": "F32", "shape": [1], "data_offsets": {"begin": 0, "end": 4}}), "data_offsets"),
    ("offsets-null", one({"dtype": "F32", "shape": [1], "data_offsets": None}), "data_offsets"),
    ("span-too-small-for-shape", one(entry(shape=(2,), offsets=(0, 4))), "needs 8"),
    ("span-too-large-for-shape", one(entry(shape=(1,), offsets=(0, 8)), b"\0" * 8), "needs 4"),
    ("span-wrong-itemsize", one(entry(dtype="F16", shape=(4,), offsets=(0, 4))), "needs 8"),
    ("zero-size-shape-with-bytes", one(entry(shape=(0, 4), offsets=(0, 4))), "needs 0"),
    ("scalar-with-two-elements", one(entry(shape=(), offsets=(0, 8)), b"\0" * 8), "needs 4"),
    ("shape-overflows-file", one(entry(shape=(2**31, 2**31), offsets=(0, 4))), "needs"),
    ("offsets-overlap", blob({"a": entry(offsets=(0, 8), shape=(2,)), "b": entry(offsets=(4, 12), shape=(2,))},
                             b"\0" * 12), "overlap"),
    ("offsets-alias-same-bytes", blob({"a": entry(), "b": entry()}, b"\0" * 4), "overlap"),
    ("offsets-gap-between", blob({"a": entry(), "b": entry(offsets=(8, 12))}, b"\0" * 12), "not covered"),
    ("offsets-gap-at-start", blob({"a": entry(offsets=(4, 8))}, b"\0" * 8), "not covered"),
    ("zero-size-tensor-inside-gap", blob({"a": entry(), "z": entry(shape=(0,), offsets=(2, 2))}, b"\0" * 4), "overlap"),
    ("offsets-past-end", one(entry(shape=(4,), offsets=(0, 16))), "past the end"),
    ("offsets-far-past-end", one(entry(shape=(2**40,), offsets=(0, 2**42))), "past the end"),
    ("trailing-bytes-after-data", one(entry(), b"\0" * 5), "not covered"),
    ("data-without-tensors", blob({}, b"\0" * 16), "not covered"),
    ("metadata-only-with-data", blob({"__metadata__": {"a": "b"}}, b"\1"), "not covered"),
    ("bool-data-not-0-or-1", one(entry(dtype="BOOL", shape=(2,), offsets=(0, 2)), b"\x01\x07"), "bool"),
]


@pytest.mark.parametrize("data, expected", [c[1:] for c in BYTE_CASES], ids=[c[0] for c in BYTE_CASES])
def test_malformed_bytes_are_refused(tmp_path, data, expected):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    readers = (read_safetensors, read_state_dict) if expected == "bool" else (read_header, read_safetensors, read_state_dict)
    expect_refusal(path, expected, readers)


def test_byte_cases_are_many_and_distinct():
    ids = [c[0] for c in BYTE_CASES]
    assert len(ids) == len(set(ids)) and len({c[1] for c in BYTE_CASES}) == len(BYTE_CASES)
    assert len(BYTE_CASES) >= 40


def test_library_refuses_what_we_refuse_for_format_errors(tmp_path):
    """Cross-check: the safetensors library refuses the format errors too (bar the cases where we are
    deliberately stricter: duplicates, unsupported dtypes, bool bytes, lone surrogates, absurd dims)."""
    stricter = {"duplicate-tensor-name", "bool-data-not-0-or-1", "lone-surrogate-metadata",
                "shape-65-dims", "dtype-sub-byte-F4", "dtype-torch-name", "length-2^64-1"}
    for name, data, _ in BYTE_CASES:
        if name in stricter:
            continue
        with pytest.raises(Exception):
            safetensors.torch.load(data)


# --- malformed files that need the file system ------------------------------------------------

@pytest.fixture()
def base(tmp_path) -> Path:
    return make_lora(tmp_path / "base.safetensors", keep=lambda n: n == ONE_MODULE, rank=2)


def test_missing_file(tmp_path):
    expect_refusal(tmp_path / "nowhere.safetensors", "not found")


def test_missing_parent_folder(tmp_path):
    expect_refusal(tmp_path / "no_such_folder" / "x.safetensors", "not found")


def test_path_through_a_file(tmp_path, base):
    expect_refusal(base / "x.safetensors", "not found")


def test_directory(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    expect_refusal(folder, "folder")


def test_named_pipe_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    expect_refusal(fifo, "not a regular file")  # opening it for reading would hang without a writer


def test_symlink_to_nowhere(tmp_path):
    link = tmp_path / "dangling.safetensors"
    link.symlink_to(tmp_path / "gone.safetensors")
    expect_refusal(link, "not found")


def test_unreadable_file(tmp_path, base, monkeypatch):
    """Tests run as root, where chmod 000 does not bite: the OS refusal is simulated on os.open."""
    real_open = os.open

    def denied(path, *args, **kw):
        if os.fspath(path) == os.fspath(base):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", denied)
    expect_refusal(base, "permission denied", (read_header, read_safetensors, read_state_dict, tensor_data_sha256))


def test_read_error_in_the_middle(tmp_path, base, monkeypatch):
    """An I/O error while reading tensor data (bad sector, network share gone) is one clean line."""
    import lora_merge_ext.safetensors_io as sio
    real_open = sio.open_input_file

    class FailingReader:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, *args):
            return self.f.seek(*args)

        def fileno(self):
            return self.f.fileno()

        def readinto(self, buffer):
            raise OSError(errno.EIO, "Input/output error")

    def failing_open(path):
        f, size = real_open(path)
        return FailingReader(f), size

    monkeypatch.setattr(sio, "open_input_file", failing_open)
    expect_refusal(base, "input/output error", (read_safetensors,))


def test_truncated_valid_file(tmp_path, base):
    data = base.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, len(data) - 4):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        expect_refusal(path, "past the end")


def test_trailing_garbage_after_valid_file(tmp_path, base):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(base.read_bytes() + b"PK\x03\x04 more bytes")
    expect_refusal(path, "not covered")


def test_header_length_claims_hundreds_of_mb_without_allocating(tmp_path):
    path = tmp_path / "claims.safetensors"
    path.write_bytes(struct.pack("<Q", 400_000_000) + b'{"a": 1}')
    tracemalloc.start()
    try:
        for reader in (read_header, read_safetensors, tensor_data_sha256):
            with pytest.raises(LoraMergeError, match="exceeds"):
                reader(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak


def test_header_above_cap_in_a_file_that_large(tmp_path):
    """A (sparse) file really holding a 150 MB header: refused by the cap, before reading it."""
    path = tmp_path / "bigheader.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        f.truncate(MAX_HEADER_BYTES + 64)
    tracemalloc.start()
    try:
        expect_refusal(path, "exceeds", (read_header, read_safetensors))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak


def test_unknown_extension(tmp_path, base):
    for name in ("lora.txt", "lora", "lora.safetensors.part", "lora.gguf"):
        path = tmp_path / name
        path.write_bytes(base.read_bytes())
        with pytest.raises(LoraMergeError, match="unknown file type"):
            read_state_dict(path)


def test_safetensors_named_pt_is_refused_cleanly(tmp_path, base):
    path = tmp_path / "actually_safetensors.pt"
    path.write_bytes(base.read_bytes())
    expect_refusal(path, "convert it to .safetensors", (read_state_dict,))


def test_unknown_key_requested(base):
    with pytest.raises(LoraMergeError, match="no tensor named 'nope'"):
        read_safetensors(base, keys=["nope"])


# --- hostile pickles (.pt / .ckpt / .bin / .pth) ------------------------------------------------

class _Boom:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Builtin:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _pickled(obj, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "torch-zip":
        torch.save(obj, buffer)
    else:
        pickle.dump(obj, buffer, protocol=int(fmt[-1]))
    return buffer.getvalue()


@pytest.mark.parametrize("payload", [_Boom, _Builtin])
@pytest.mark.parametrize("fmt", ["torch-zip", "pickle-2", "pickle-4"])
@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth"])
def test_malicious_pickle_never_runs(tmp_path, payload, fmt, suffix):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(_pickled({"lora_unet_x.lora_down.weight": torch.ones(2, 2), "payload": payload(marker)}, fmt))
    with pytest.raises(LoraMergeError) as info:
        read_state_dict(path)
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message and path.name in message and "safetensors" in message, message
    assert "weights_only" not in message  # we never advise turning the protection off


PICKLE_CASES = [
    ("random-bytes", bytes(range(256)) * 4, "refused to unpickle"),
    ("truncated-zip", None, "refused to unpickle"),
    ("a-list", _pickled([torch.ones(2)], "torch-zip"), "holds a list"),
    ("a-tensor", _pickled(torch.ones(2), "torch-zip"), "holds a tensor"),
    ("non-tensor-value", _pickled({"a": torch.ones(2), "epoch": 3}, "torch-zip"), "'epoch' holds a int"),
    ("nested-non-tensor", _pickled({"state_dict": {"a": torch.ones(2), "b": "text"}}, "torch-zip"), "'b' holds a str"),
    ("int-key", _pickled({1: torch.ones(2)}, "torch-zip"), "string keys"),
    ("sparse-tensor", _pickled({"a": torch.eye(3).to_sparse()}, "torch-zip"), "dense"),
    ("empty-file", b"", "empty"),
]


@pytest.mark.parametrize("data, expected", [c[1:] for c in PICKLE_CASES], ids=[c[0] for c in PICKLE_CASES])
def test_malformed_pickles_are_refused(tmp_path, data, expected):
    if data is None:
        data = _pickled({"a": torch.ones(100)}, "torch-zip")[:300]
    path = tmp_path / "bad.ckpt"
    path.write_bytes(data)
    expect_refusal(path, expected, (read_state_dict,))


# --- mutated copies of valid files ---------------------------------------------------------------

def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def check_mutant(path: Path, data: bytes) -> bool:
    """Either we refuse with LoraMergeError, or we read exactly the declared shapes, and the
    safetensors library reads the same tensors bit for bit. True when the file was accepted."""
    path.write_bytes(data)
    try:
        infos, _ = read_header(path)
        tensors, metadata = read_safetensors(path)
    except LoraMergeError as e:
        assert "\n" not in str(e)
        return False
    assert set(tensors) == set(infos)
    for key, t in tensors.items():
        assert tuple(t.shape) == infos[key].shape
    reference = safetensors.torch.load(data)
    assert set(reference) == set(tensors)
    for key in tensors:
        assert reference[key].dtype == tensors[key].dtype and _bits(reference[key]) == _bits(tensors[key])
    return True


def _small_valid() -> bytes:
    gen = torch.Generator().manual_seed(7)
    tensors = {"a.alpha": torch.tensor(2.0), "a.lora_down.weight": torch.randn(2, 3, generator=gen),
               "a.lora_up.weight": torch.randn(3, 2, generator=gen).half(), "empty": torch.zeros(0, 3), "b": torch.arange(3)}
    return safetensors.torch.save(tensors, {"ss_network_dim": "2", "note": "mutate me"})


def test_every_single_byte_flip_of_the_header(tmp_path, base):
    """Exhaustive: each header byte of two valid files, XORed with 0x01, 0x20 and 0x80, and set to '9'."""
    sources = [_small_valid(), base.read_bytes()]
    path = tmp_path / "mutant.safetensors"
    generated = accepted = 0
    for data in sources:
        n = int.from_bytes(data[:8], "little")
        for i in range(8 + n):
            for op in (lambda b: b ^ 0x01, lambda b: b ^ 0x20, lambda b: b ^ 0x80, lambda b: ord("9")):
                mutated = bytearray(data)
                mutated[i] = op(mutated[i])
                if bytes(mutated) == data:
                    continue
                generated += 1
                accepted += check_mutant(path, bytes(mutated))
    assert generated > 3000 and 0 < accepted < generated


def test_every_truncation(tmp_path):
    data = _small_valid()
    path = tmp_path / "cut.safetensors"
    assert not any(check_mutant(path, data[:cut]) for cut in range(len(data)))
    assert check_mutant(path, data)


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "length", "splice"]))
    count = draw(st.integers(1, 6))
    edits = [(draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(0, 255))) for _ in range(count)]
    return kind, edits


def apply_mutation(data: bytes, kind: str, edits) -> bytes:
    out = bytearray(data)
    for fraction, value in edits:
        # bias towards the header, where the structure is
        n = int.from_bytes(data[:8], "little")
        region = 8 + n if value % 3 else len(out)
        i = min(int(fraction * region), len(out) - 1)
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "overwrite":
            out[i] = value
        elif kind == "insert":
            out[i:i] = bytes([value])
        elif kind == "delete" and len(out) > 1:
            del out[i]
        elif kind == "length":
            out[0:8] = struct.pack("<Q", max(0, n + value - 128))
        elif kind == "splice":
            out[i:i + 4] = out[(i + value) % len(out):(i + value) % len(out) + 4]
    return bytes(out)


def _factory_bytes() -> bytes:
    """The bytes make_lora writes for a four-module kohya file (alphas, downs, ups)."""
    tensors = make_tensors("sd15_lora", keep=lambda n: n.startswith(ONE_MODULE[:-1]), rank=1)
    return safetensors.torch.save(tensors, {"ss_base_model_version": "sd_v1", "ss_network_dim": "1"})


FUZZ_SOURCES = [_small_valid(), _factory_bytes()]


@settings(max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(FUZZ_SOURCES), mutation=mutations())
def test_random_mutations_read_or_refuse(tmp_path, source, mutation):
    check_mutant(tmp_path / "fuzz.safetensors", apply_mutation(source, *mutation))
