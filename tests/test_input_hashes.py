"""The hash a merge records for each input: the sshs_model_hash the input declares (as the WebUI
shows it and looks it up by), without hashing the file; else the addnet hash of its data."""
import hashlib
import json
import struct

import pytest

from lora_factory import make_lora
from lora_merge_ext import api, hash_memo, lazy_lora
from lora_merge_ext.inspect_file import describe
from lora_merge_ext.loading import load_lora
from lora_merge_ext.safetensors_io import declared_hash

KEEP = lambda n: "layers_3_mlp_fc1" in n or "attn2_to_q" in n or "proj_in" in n
DECLARED = "ab" * 32  # not the file's data hash: as a tool that hashed before casting writes it


def data_sha256(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def header_of(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def provenance(path):
    return json.loads(header_of(path)[0]["__metadata__"]["ljl_provenance"])


@pytest.fixture
def inputs(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP,
                  metadata={"sshs_model_hash": DECLARED.upper()})
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=KEEP)  # add needs equal ranks
    hash_memo.forget_all()
    return a, b


@pytest.mark.parametrize("value, expected", [
    (DECLARED, DECLARED), (DECLARED.upper(), DECLARED.upper()),  # as stored: the WebUI uses it so
    (f" {DECLARED}\n", None), ("0" * 64, None),  # a placeholder
    (hashlib.sha256(b"").hexdigest(), None), (hashlib.sha256(b"").hexdigest().upper(), None),  # no data at all
    (DECLARED[:-1], None), (DECLARED + "a", None), ("0x" + DECLARED[2:], None), ("zz" * 32, None), ("", None),
])
def test_only_a_well_formed_declared_hash_counts(value, expected):
    assert declared_hash({"sshs_model_hash": value}) == expected
    assert declared_hash({}) is None


@pytest.mark.parametrize("mode", ["concat", "add", "svd"])
def test_a_merge_records_the_declared_hash_and_computes_the_others(inputs, tmp_path, mode):
    a, b = inputs
    kw = dict(mode=mode, weights=[1.0, -0.5], rank=6 if mode == "svd" else None)
    saved, _ = api.merge_to_file([a, b], tmp_path / "out.safetensors", **kw)
    entries = provenance(saved.path)["inputs"]
    assert [(e["sha256"], e["sha256_from"]) for e in entries] == [(DECLARED.upper(), "sshs_model_hash"),
                                                                  (data_sha256(b), "data")]
    meta = header_of(saved.path)[0]["__metadata__"]
    assert meta["sshs_model_hash"] == data_sha256(saved.path) != DECLARED


def test_a_declared_input_is_not_hashed(inputs, tmp_path, monkeypatch):
    a, b = inputs
    hashed = []
    real = lazy_lora._sha256_of_file
    monkeypatch.setattr(lazy_lora, "_sha256_of_file", lambda path, *rest: hashed.append(path) or real(path, *rest))
    api.merge_to_file([a, b], tmp_path / "out.safetensors")
    assert hashed == [str(b)]  # the streamed concat hashed b only
    lazy = lazy_lora.open_lazy(a)
    try:
        assert lazy.file_hash() == data_sha256(a)  # asked for, it is computed
    finally:
        lazy.close()
    assert load_lora(a).digest is None and load_lora(b).digest is not None  # nor does reading it whole


def test_realize_records_the_declared_hash(tmp_path):
    joined = api.merge_to_file([make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP),
                                make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=KEEP)],
                               tmp_path / "joined.safetensors")[0]
    baked = api.realize(joined.path, "1,0")
    source = json.loads(baked.metadata["ljl_provenance"])["inputs"][0]
    assert source == {"file": "joined.safetensors", "sha256": joined.sha256, "sha256_from": "sshs_model_hash"}
    assert joined.sha256 == data_sha256(joined.path)  # our own files declare the hash of their data


def test_a_lora_made_in_memory_records_no_hash(inputs):
    a, b = inputs
    joined = api.merge([a, b]).lora  # not saved: no file, no declared hash
    entries = json.loads(api.merge([joined, b]).lora.metadata["ljl_provenance"])["inputs"]
    assert [(e["file"], e["sha256"], e["sha256_from"]) for e in entries] == [
        (None, None, None), ("b.safetensors", data_sha256(b), "data")]


def test_inspect_takes_a_declared_hash_in_capitals_as_matching(tmp_path):
    plain = make_lora(tmp_path / "p.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP)
    upper = make_lora(tmp_path / "u.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP,
                      metadata={"sshs_model_hash": data_sha256(plain).upper()})
    wrong = make_lora(tmp_path / "w.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP,
                      metadata={"sshs_model_hash": DECLARED})
    assert describe(str(upper))["stored_hash_matches"] is True
    assert describe(str(wrong))["stored_hash_matches"] is False
