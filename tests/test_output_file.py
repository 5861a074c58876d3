"""Written files: kohya format, metadata, hashes of the final bytes, dtypes, overwrite and input protection."""
import hashlib
import json
import struct

import pytest
import torch
from safetensors import safe_open

from delta_oracle import dense_deltas
from lora_factory import make_lora
from lora_merge_ext import api
from lora_merge_ext.errors import LoraMergeError

KEEP = lambda n: "layers_3_mlp_fc1" in n or "attn2_to_q" in n


@pytest.fixture
def inputs(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP,
                  metadata={"ss_output_name": "style_a", "sshs_model_hash": "0" * 64, "ss_network_dim": "4"})
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=8, seed=2, keep=KEEP)
    return a, b


def data_sha256(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def metadata_of(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).dtype for k in f.keys()}


@pytest.mark.parametrize("dtype, torch_dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_metadata_and_hash_of_the_saved_file(inputs, tmp_path, dtype, torch_dtype):
    a, b = inputs
    saved = api.save(api.merge([a, b], weights=[1, 0.5]).lora, tmp_path / "out.safetensors", dtype=dtype)
    meta, dtypes = metadata_of(saved.path)
    assert meta["sshs_model_hash"] == data_sha256(saved.path) == saved.sha256
    assert meta["ss_base_model_version"] == "sd_v1"
    assert "ss_output_name" not in meta
    assert meta["ss_network_dim"] == "12" and meta["ss_network_alpha"] == "12"  # ranks 4 + 8 everywhere, scale 1
    prov = json.loads(meta["ljl_provenance"])
    assert prov["mode"] == "concat" and [i["weight"] for i in prov["inputs"]] == [1.0, 0.5]
    assert prov["inputs"][0]["sha256"] == data_sha256(a)
    layout = json.loads(meta["ljl_layout"])
    assert [c["rank"] for c in layout["components"]] == [4, 8]
    assert {d for k, d in dtypes.items() if k.endswith("weight")} == {torch_dtype}
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in dtypes)


def test_svd_output_has_uniform_dims(inputs, tmp_path):
    saved = api.save(api.merge(list(inputs), mode="svd", rank=3).lora, tmp_path / "s.safetensors")
    meta, _ = metadata_of(saved.path)
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "3"


def test_fp16_output_stays_close(inputs, tmp_path):
    a, b = inputs
    lora = api.merge([a, b]).lora
    full = dense_deltas(api.save(lora, tmp_path / "f32.safetensors").path)
    half = dense_deltas(api.save(lora, tmp_path / "f16.safetensors", dtype="fp16").path)
    for n in full:
        assert ((half[n] - full[n]).norm() / full[n].norm()).item() < 2e-3


def test_existing_files_and_inputs_are_never_replaced(inputs, tmp_path):
    a, b = inputs
    lora = api.merge([a, b]).lora
    before = open(a, "rb").read()
    with pytest.raises(LoraMergeError, match="input"):
        api.save(lora, a, overwrite=True)
    with pytest.raises(LoraMergeError, match="input"):
        api.save(lora, tmp_path / "sub" / ".." / "a.safetensors", overwrite=True)
    assert open(a, "rb").read() == before
    out = tmp_path / "out.safetensors"
    api.save(lora, out)
    first = open(out, "rb").read()
    with pytest.raises(LoraMergeError, match="exists"):
        api.save(lora, out)
    assert open(out, "rb").read() == first
    api.save(api.merge([a, b], weights=[2, 2]).lora, out, overwrite=True)
    assert open(out, "rb").read() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "out.safetensors"]


@pytest.mark.parametrize("name", ["out.pt", "out.ckpt", "out", "out.safetensors.bak"])
def test_the_api_writes_safetensors_names_only(inputs, tmp_path, name):
    """The WebUI would read a .pt or .ckpt as a pickle, or not list the file: refused as by the CLI."""
    a, b = inputs
    for write in (lambda: api.save(api.merge([a, b]).lora, tmp_path / name),
                  lambda: api.merge_to_file([a, b], tmp_path / name),
                  lambda: api.save(api.realize(a, "1"), tmp_path / name)):
        with pytest.raises(LoraMergeError, match="name it NAME.safetensors"):
            write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
    api.merge_to_file([a, b], tmp_path / "OUT.SafeTensors")  # the case of the extension does not matter


def test_merged_file_reads_back_as_a_lora_with_components(inputs, tmp_path):
    saved = api.save(api.merge(list(inputs)).lora, tmp_path / "j.safetensors")
    from lora_merge_ext.inspect_file import describe
    info = describe(saved.path)
    assert info["components"] == [{"name": "a", "rank": 4}, {"name": "b", "rank": 8}]
    assert info["stored_hash_matches"] is True and info["family"] == "SD1"
