"""The file layer on valid files: reads agree with the safetensors library, pickles load only as
plain tensors, the addnet hashes are the ones A1111 and kohya compute, saves embed the right hashes."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import tracemalloc
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lora_factory import make_lora, make_tensors
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.safetensors_io import (TORCH_DTYPES, TensorInfo, a1111_hash, find_nonfinite, legacy_hash, read_header,
                                           read_safetensors, read_state_dict, save_safetensors_atomic,
                                           tensor_data_sha256)

SUBSET = lambda n: "down_blocks_1" in n or "conv_in" in n or "layers_0_self_attn" in n  # noqa: E731


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and bits(a[k]) == bits(b[k]), k


def addnet_hash_a1111(path: Path) -> str:
    """The addnet hash as A1111's hashes.addnet_hash_safetensors computes it (written from its description)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()


def kohya_hashes(tensors: dict, metadata: dict) -> tuple[str, str]:
    """kohya's precalculate_safetensors_hashes, step by step: a blob with only ss_* metadata, then the
    data after its header, and 64 KiB at offset 1 MiB."""
    blob = io.BytesIO(safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    n = int.from_bytes(blob.read(8), "little")
    blob.seek(8 + n)
    model = hashlib.sha256(blob.read()).hexdigest()
    blob.seek(0x100000)
    return model, hashlib.sha256(blob.read(0x10000)).hexdigest()[:8]


# --- reading ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["sd15_locon", "sdxl_lora"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_read_matches_safetensors_library(tmp_path, spec, dtype):
    path = make_lora(tmp_path / "a.safetensors", spec, keep=SUBSET, rank=3, dtype=dtype, tucker=True,
                     metadata={"ss_network_dim": "3", "ünïcode": "ключ ✨"})
    tensors, metadata = read_safetensors(path)
    assert_same(tensors, safetensors.torch.load_file(path))
    with safetensors.safe_open(path, "pt") as f:
        assert metadata == f.metadata()
    infos, meta2 = read_header(path)
    assert meta2 == metadata and set(infos) == set(tensors)
    for key, info in infos.items():
        assert isinstance(info, TensorInfo)
        assert info.shape == tuple(tensors[key].shape) and TORCH_DTYPES[info.dtype] == tensors[key].dtype


def test_every_dtype_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, dtype in TORCH_DTYPES.items():
        if dtype.is_floating_point:
            tensors[name] = torch.randn(3, 5, generator=gen).to(dtype)
        elif dtype == torch.bool:
            tensors[name] = torch.tensor([True, False, True])
        else:
            tensors[name] = torch.randint(0, 100, (7,), generator=gen).to(dtype)
        tensors[name + "_empty"] = torch.zeros(0, 2, dtype=dtype)
        tensors[name + "_scalar"] = torch.ones((), dtype=dtype)
    path = tmp_path / "dtypes.safetensors"
    safetensors.torch.save_file(tensors, path)
    got, _ = read_safetensors(path)
    assert_same(got, tensors)
    infos, _ = read_header(path)
    assert {infos[name].dtype for name in TORCH_DTYPES} == set(TORCH_DTYPES)


def test_keys_reads_only_those(tmp_path):
    path = make_lora(tmp_path / "a.safetensors", keep=SUBSET, rank=2)
    everything, _ = read_safetensors(path)
    wanted = sorted(everything)[3:6][::-1]
    part, metadata = read_safetensors(path, keys=wanted + wanted[:1])
    assert list(part) == wanted and metadata["ss_base_model_version"] == "sd_v1"
    assert_same(part, {k: everything[k] for k in wanted})


def test_read_header_does_not_read_tensor_data(tmp_path):
    """A (sparse) file declaring a 1 GiB tensor: the header reads in a few kB of memory."""
    path = tmp_path / "huge.safetensors"
    header = json.dumps({"big": {"dtype": "F32", "shape": [2**28], "data_offsets": [0, 2**30]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2**30)
    tracemalloc.start()
    try:
        infos, _ = read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert infos["big"].nbytes == 2**30 and peak < 1_000_000


def test_tensors_are_private_copies(tmp_path):
    path = make_lora(tmp_path / "a.safetensors", keep=SUBSET, rank=2)
    first, _ = read_safetensors(path)
    for t in first.values():
        t.add_(1.0)
    second, _ = read_safetensors(path)
    assert_same(second, safetensors.torch.load_file(path))


def _raw(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


ACCEPTED = [
    ("metadata-null", b'{"__metadata__": null, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', 4, {}),
    ("extra-entry-field", b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "note": 1}}', 4, {}),
    ("whitespace-around", b'  \n{"w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\t \r\n', 4, {}),
    ("space-padding", b'{"w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + b" " * 13, 4, {}),
    ("no-tensors", b"{}", 0, {}),
    ("metadata-only", b'{"__metadata__": {"a": "b"}}', 0, {"a": "b"}),
    ("zero-size-first-and-last", b'{"z": {"dtype":"F16","shape":[0,3],"data_offsets":[0,0]}, '
                                  b'"w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}, '
                                  b'"e": {"dtype":"I64","shape":[2,0],"data_offsets":[4,4]}}', 4, {}),
    ("only-zero-size", b'{"z": {"dtype":"F32","shape":[0],"data_offsets":[0,0]}}', 0, {}),
    ("empty-name", b'{"": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4, {}),
    ("unicode-escapes", b'{"__metadata__": {"k": "\\u00e9\\ud83d\\ude00"}, "w": {"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
     4, {"k": "é😀"}),
]


@pytest.mark.parametrize("header, size, metadata", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepts_what_safetensors_accepts(tmp_path, header, size, metadata):
    data = _raw(header, bytes(range(size)))
    path = tmp_path / "ok.safetensors"
    path.write_bytes(data)
    tensors, meta = read_safetensors(path)
    assert meta == metadata
    assert_same(tensors, safetensors.torch.load(data))


def test_empty_tensors_written_by_safetensors(tmp_path):
    tensors = {"a": torch.zeros(0), "b": torch.ones(2, 0, 3), "c": torch.arange(4.0), "d": torch.zeros(0, dtype=torch.bfloat16)}
    path = tmp_path / "empty.safetensors"
    safetensors.torch.save_file(tensors, path)
    got, _ = read_safetensors(path)
    assert_same(got, tensors)


# --- pickles ---------------------------------------------------------------------------------

def test_pickled_flat_dict(tmp_path):
    tensors = make_tensors("sd15_lora", keep=SUBSET, rank=2)
    for suffix in (".pt", ".PTH", ".bin"):
        path = tmp_path / f"a{suffix}"
        torch.save(tensors, path)
        got, metadata = read_state_dict(path)
        assert metadata == {}
        assert_same(got, tensors)


def test_pickled_nested_state_dict_legacy_format(tmp_path):
    tensors = make_tensors("sd15_lora", keep=SUBSET, rank=2)
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {k: torch.nn.Parameter(v) for k, v in tensors.items()}, "epoch": 3,
                "global_step": 100}, path, _use_new_zipfile_serialization=False)
    got, _ = read_state_dict(path)
    assert_same(got, tensors)
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in got.values())


def test_read_state_dict_dispatches_safetensors(tmp_path):
    path = make_lora(tmp_path / "A.SafeTensors", keep=SUBSET, rank=2)
    assert_same(read_state_dict(path)[0], safetensors.torch.load_file(path))


# --- non-finite values -----------------------------------------------------------------------

def test_find_nonfinite():
    ok = torch.randn(4, 4)
    cases = {"ok": ok, "nan": ok.clone().index_fill_(0, torch.tensor([2]), float("nan")),
             "inf16": torch.tensor([1.0, float("inf")]).half(), "ninf_bf16": torch.tensor([-float("inf")]).bfloat16(),
             "int": torch.arange(3), "empty": torch.zeros(0), "alpha": torch.tensor(2.0),
             "nan_scalar": torch.tensor(float("nan")), "fp8": torch.tensor([1.0, float("nan")]).to(torch.float8_e5m2),
             "f64": torch.tensor([1e308]).double() * 10}
    assert find_nonfinite(cases) == ["nan", "inf16", "ninf_bf16", "nan_scalar", "fp8", "f64"]
    assert find_nonfinite({"big_but_finite": torch.tensor([65504.0]).half()}) == []


# --- hashes ----------------------------------------------------------------------------------

def test_tensor_data_sha256_is_the_addnet_hash(tmp_path):
    path = make_lora(tmp_path / "a.safetensors", keep=SUBSET, rank=2)
    assert tensor_data_sha256(path) == addnet_hash_a1111(path)
    tensors = safetensors.torch.load_file(path)
    other = tmp_path / "b.safetensors"
    safetensors.torch.save_file(tensors, other, metadata={"totally": "different", "x" * 50: "y" * 5000})
    assert tensor_data_sha256(other) == tensor_data_sha256(path)  # metadata does not count
    safetensors.torch.save_file({k: v.half() for k, v in tensors.items()}, other)
    assert tensor_data_sha256(other) != tensor_data_sha256(path)  # dtypes do


def test_a1111_hash_by_file_type(tmp_path):
    path = make_lora(tmp_path / "a.safetensors", keep=SUBSET, rank=2)
    assert a1111_hash(path) == tensor_data_sha256(path) != hashlib.sha256(path.read_bytes()).hexdigest()
    pt = tmp_path / "a.pt"
    torch.save(safetensors.torch.load_file(path), pt)
    assert a1111_hash(pt) == hashlib.sha256(pt.read_bytes()).hexdigest()
    with pytest.raises(LoraMergeError, match="not found"):
        a1111_hash(tmp_path / "missing.ckpt")


def test_save_embeds_kohya_hashes_of_the_final_bytes(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors = {"m.lora_down.weight": torch.randn(8, 40000, generator=gen), "m.alpha": torch.tensor(4.0),
               "m.lora_up.weight": torch.randn(320, 8, generator=gen)}
    metadata = {"ss_network_dim": "8", "ss_output_name": "x", "modelspec.title": "t", "sshs_model_hash": "stale"}
    path = tmp_path / "out.safetensors"
    returned = save_safetensors_atomic(tensors, metadata, path)
    assert path.stat().st_size > 0x110000
    _, meta = read_safetensors(path)
    assert meta["sshs_model_hash"] == returned == tensor_data_sha256(path) == addnet_hash_a1111(path)
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == kohya_hashes(tensors, metadata)
    assert meta["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    assert {k: meta[k] for k in metadata if k != "sshs_model_hash"} == {k: v for k, v in metadata.items() if k != "sshs_model_hash"}
    assert_same(safetensors.torch.load_file(path), tensors)


def test_save_hash_follows_the_saved_dtype(tmp_path):
    tensors = make_tensors("sd15_lora", keep=SUBSET, rank=2)
    h32 = save_safetensors_atomic(tensors, {}, tmp_path / "f32.safetensors")
    half = {k: v.half() for k, v in tensors.items()}
    h16 = save_safetensors_atomic(half, {}, tmp_path / "f16.safetensors")
    assert h16 != h32
    assert h16 == tensor_data_sha256(tmp_path / "f16.safetensors")
    assert read_header(tmp_path / "f16.safetensors")[1]["sshs_model_hash"] == h16
    assert read_header(tmp_path / "f16.safetensors")[0]["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].dtype == "F16"


def test_small_file_legacy_hash_is_kohyas_empty_read(tmp_path):
    tensors = {"a": torch.ones(3)}
    save_safetensors_atomic(tensors, {}, tmp_path / "s.safetensors")
    meta = read_header(tmp_path / "s.safetensors")[1]
    assert meta["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8] == kohya_hashes(tensors, {})[1]
    assert legacy_hash(b"\0" * 0x100000 + b"abc") == hashlib.sha256(b"abc").hexdigest()[:8]


def test_save_handles_views_shared_storage_and_non_contiguous(tmp_path):
    base = torch.randn(6, 4)
    tensors = {"same1": base, "same2": base, "slice": base[2:4], "t": base.t(), "alpha": torch.tensor(1.0)}
    path = tmp_path / "shared.safetensors"
    digest = save_safetensors_atomic(tensors, {"k": "v"}, path)
    got, _ = read_safetensors(path)
    assert_same(got, {k: v.contiguous() for k, v in tensors.items()})
    assert digest == tensor_data_sha256(path)


@pytest.mark.parametrize("metadata", [{"ss_network_dim": 4}, {"a": None}, {"a": b"bytes"}, {3: "x"}, {"a": 1.5}, ["a"]])
def test_save_refuses_non_string_metadata(tmp_path, metadata):
    path = tmp_path / "m.safetensors"
    with pytest.raises(LoraMergeError, match="metadata"):
        save_safetensors_atomic({"a": torch.ones(2)}, metadata, path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tensors", [{"a": [1.0, 2.0]}, {"__metadata__": torch.ones(1)}, {"": torch.ones(1)},
                                     {"s": torch.eye(2).to_sparse()}, {"c": torch.ones(2, dtype=torch.complex128)},
                                     {"m": torch.ones(2, device="meta")}])
def test_save_refuses_unsavable_tensors(tmp_path, tensors):
    with pytest.raises(LoraMergeError):
        save_safetensors_atomic(tensors, {}, tmp_path / "t.safetensors")
    assert list(tmp_path.iterdir()) == []


# --- the streaming writer ----------------------------------------------------------------------

def test_saved_file_is_what_safetensors_writes(tmp_path):
    """Same tensor order, offsets, header length and data bytes as safetensors.torch.save."""
    gen = torch.Generator().manual_seed(5)
    tensors = {f"t_{name.lower()}": (torch.randn(3, 5, generator=gen) * 4).to(dtype)
               for name, dtype in TORCH_DTYPES.items()}
    tensors.update({"b_scalar.alpha": torch.tensor(2.5), "a_empty": torch.zeros(0, 4, dtype=torch.float16),
                    "z_big": torch.randn(700, 300, generator=gen), "m_view": torch.randn(6, 6, generator=gen).T})
    metadata = {"ss_network_dim": "8", "note": "ünïcode \n\t\x01 \"quoted\" /slash"}
    path = tmp_path / "w.safetensors"
    save_safetensors_atomic(tensors, metadata, path)
    ours = path.read_bytes()
    n = int.from_bytes(ours[:8], "little")
    header = json.loads(ours[8:8 + n])
    reference = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, header["__metadata__"])
    m = int.from_bytes(reference[:8], "little")
    assert n == m and n % 8 == 0 and header == json.loads(reference[8:8 + m])
    assert list(header)[1:] == list(json.loads(reference[8:8 + m]))[1:]  # tensors in the same order
    assert ours[8 + n:] == reference[8 + m:]
    assert_same(safetensors.torch.load_file(path), {k: v.contiguous() for k, v in tensors.items()})


def test_misaligned_tensors_are_read_correctly(tmp_path):
    """A writer that neither pads the header nor aligns offsets: an F16 tensor at an odd offset."""
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.float16)
    header = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "b": {"dtype": "F16", "shape": [3], "data_offsets": [1, 7]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(_raw(header, b"\x07" + bits(values)))
    tensors, _ = read_safetensors(path)
    assert tensors["a"].tolist() == [7] and torch.equal(tensors["b"], values)


def test_read_tensor_file_hashes_the_bytes_it_read(tmp_path):
    from lora_merge_ext.safetensors_io import read_tensor_file
    path = make_lora(tmp_path / "a.safetensors", keep=SUBSET, rank=2)
    loaded = read_tensor_file(path, digest=True)
    assert loaded.digest.hexdigest() == addnet_hash_a1111(path) == tensor_data_sha256(path)
    assert read_tensor_file(path).digest is None
    assert_same(loaded.tensors, safetensors.torch.load_file(path))
