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


@pytest.mark.parametrize("spec, claimed, written", [
    ("sd15_lora", {"ss_base_model_version": "sdxl_base_v1-0",
                   "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
     {"ss_base_model_version": "sd_v1", "ss_v2": "False"}),
    ("sdxl_lora", {"ss_base_model_version": "sd_v1", "ss_v2": "False"},
     {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"}),
    ("sd15_lora", {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
     {"ss_base_model_version": "sd_v1", "ss_v2": "False"}),
])
def test_base_model_keys_that_contradict_the_tensors_are_not_copied(tmp_path, spec, claimed, written):
    """The family comes from the tensors (an SD1 file stays SD1 whatever its metadata says); the
    output's base-model keys must agree with it, or the WebUI files the card under the wrong model."""
    keep = (lambda n: "attn2_to_k" in n) if spec == "sd15_lora" else \
        (lambda n: "input_blocks_4_1_transformer_blocks_0_attn2_to_k" in n)
    a = make_lora(tmp_path / "a.safetensors", spec, rank=2, seed=1, keep=keep, metadata=claimed)
    b = make_lora(tmp_path / "b.safetensors", spec, rank=2, seed=2, keep=keep)
    for mode in ("concat", "svd"):
        saved, _ = api.merge_to_file([a, b], tmp_path / f"{mode}.safetensors", mode=mode)
        meta, _ = metadata_of(saved.path)
        assert {k: meta.get(k) for k in written} == written
        assert "xl" not in meta.get("modelspec.architecture", "") or spec == "sdxl_lora"
    realized = api.save(api.realize(str(a), "1"), tmp_path / "r.safetensors")
    assert {k: metadata_of(realized.path)[0].get(k) for k in written} == written


def test_merge_to_file_takes_loras_made_in_memory(inputs, tmp_path):
    """api.merge accepts LoraFiles, merge_to_file is merge() then save(): one without a file too."""
    a, b = inputs
    half = api.realize(str(a), "0.5")
    assert half.path is None
    saved, _ = api.merge_to_file([half, b], tmp_path / "mix.safetensors", weights=[1, -1])
    got, da, db = dense_deltas(saved.path), dense_deltas(a), dense_deltas(b)
    for name in got:
        expected = 0.5 * da.get(name, 0) - db.get(name, 0)
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-6)


def test_component_names_drop_outer_spaces_so_each_can_be_picked(tmp_path):
    a = make_lora(tmp_path / " a.safetensors", rank=2, seed=1, keep=KEEP)
    b = make_lora(tmp_path / "a .safetensors", rank=2, seed=2, keep=KEEP)
    c = make_lora(tmp_path / " .safetensors", rank=2, seed=3, keep=KEEP)
    lora = api.merge([a, b, c]).lora
    from lora_merge_ext.layout import layout_of
    assert [comp.name for comp in layout_of(lora).components] == ["a", "a_2", "input3"]
    api.realize(lora, "a_2=1")  # a name each can be picked by
