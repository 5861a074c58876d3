"""Bundled embeddings (bundle_emb.NAME.… keys, the trigger words a LoRA carries): every merge mode and
the bake keep them as stored, inspect lists them, and two inputs that disagree on one are refused."""
import json

import pytest
import torch
from safetensors.torch import load_file

from delta_oracle import dense_delta, raw_modules
from lora_factory import make_tensors, write_lora
from lora_merge_ext import api
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.inspect_file import describe, format_description

def KEEP(name):
    return "down_blocks_0_attentions_0" in name or name.startswith("lora_te_text_model_encoder_layers_0_")
EMB = "bundle_emb.mychar.string_to_param.*"
OTHER = "bundle_emb.otherchar.string_to_param.*"


def _file(path, seed, embeddings, dtype=torch.float32):
    tensors = make_tensors("sd15_lora", rank=4, seed=seed, keep=KEEP, dtype=dtype)
    tensors.update(embeddings)
    return write_lora(path, tensors)


@pytest.fixture
def inputs(tmp_path):
    gen = torch.Generator().manual_seed(7)
    mine, other = torch.randn(2, 768, generator=gen), torch.randn(1, 768, generator=gen).half()
    a = _file(tmp_path / "a.safetensors", 1, {EMB: mine})
    b = _file(tmp_path / "b.safetensors", 2, {OTHER: other})
    return a, b, mine, other


def _module_deltas(path):
    return {n: dense_delta(w) for n, w in raw_modules(path).items() if n != "bundle_emb"}


@pytest.mark.parametrize("mode", ["concat", "add", "svd"])
def test_every_mode_keeps_the_inputs_embeddings_as_stored(inputs, tmp_path, mode):
    a, b, mine, other = inputs
    out = tmp_path / f"{mode}.safetensors"
    api.merge_to_file([a, b], out, mode=mode, weights=[1.0, -0.5], dtype="fp16")
    saved = load_file(str(out))
    assert torch.equal(saved[EMB], mine) and saved[EMB].dtype == torch.float32
    assert torch.equal(saved[OTHER], other) and saved[OTHER].dtype == torch.float16
    if mode == "concat":  # the modules are still the exact weighted sum
        da, db, dm = _module_deltas(a), _module_deltas(b), _module_deltas(out)
        assert dm.keys() == da.keys()
        for name in dm:
            torch.testing.assert_close(dm[name], da[name] - 0.5 * db[name], rtol=2e-3, atol=2e-4)
    assert describe(str(out))["bundled_embeddings"] == ["mychar", "otherchar"]
    assert "bundled embeddings: mychar, otherchar" in format_description(describe(str(out)))


def test_the_bake_keeps_them_too(inputs, tmp_path):
    a, b, mine, _ = inputs
    joined = tmp_path / "joined.safetensors"
    api.merge_to_file([a, b], joined)
    baked = tmp_path / "baked.safetensors"
    api.save(api.realize(str(joined), "1,0"), baked)
    saved = load_file(str(baked))
    assert torch.equal(saved[EMB], mine) and OTHER in saved
    da, dm = _module_deltas(a), _module_deltas(baked)
    for name in da:
        torch.testing.assert_close(dm[name], da[name], rtol=1e-5, atol=1e-6)


def test_an_embedding_two_inputs_disagree_on_is_refused(inputs, tmp_path):
    a, _, mine, _ = inputs
    same = _file(tmp_path / "same.safetensors", 3, {EMB: mine.clone()})
    differs = _file(tmp_path / "differs.safetensors", 4, {EMB: mine + 1})
    out = tmp_path / "out.safetensors"
    api.merge_to_file([a, same], out)  # the same vectors: kept once
    assert torch.equal(load_file(str(out))[EMB], mine)
    with pytest.raises(LoraMergeError, match=r"bundled embedding 'mychar' differs between a and differs; rename or "
                                             r"remove it in one of the files \(its keys: bundle_emb.mychar.…\)"):
        api.merge_to_file([a, differs], tmp_path / "refused.safetensors")
    assert not (tmp_path / "refused.safetensors").exists()


def test_a_nan_in_an_embedding_is_refused_when_read(tmp_path):
    bad = torch.zeros(1, 768)
    bad[0, 5] = float("nan")
    path = _file(tmp_path / "nan.safetensors", 1, {EMB: bad})
    with pytest.raises(LoraMergeError, match="NaN or Inf values in bundled embedding mychar"):
        api.load(path)


def test_provenance_of_a_concat_with_embeddings(inputs, tmp_path):
    """A concat with embeddings is merged in memory (not streamed); its metadata is the same kind."""
    a, b, _, _ = inputs
    out = tmp_path / "j.safetensors"
    api.merge_to_file([a, b], out)
    meta = api.load(out).metadata
    assert [i["file"] for i in json.loads(meta["ljl_provenance"])["inputs"]] == ["a.safetensors", "b.safetensors"]
    assert json.loads(meta["ljl_layout"])["components"] == [{"name": "a", "rank": 4}, {"name": "b", "rank": 4}]


@pytest.mark.parametrize("name", ["b2", "w_norm", "hada_w1_a", "lokr_w1"])
def test_an_embedding_named_like_another_lora_types_key_is_still_an_embedding(tmp_path, name):
    """`bundle_emb.b2.…` is a trigger word, not a GLoRA key: the file loads, merges and is described."""
    vector = torch.randn(1, 768, generator=torch.Generator().manual_seed(3))
    a = _file(tmp_path / "a.safetensors", 1, {f"bundle_emb.{name}.string_to_param.*": vector})
    b = _file(tmp_path / "b.safetensors", 2, {})
    out = tmp_path / "joined.safetensors"
    api.merge_to_file([a, b], out)
    assert torch.equal(load_file(str(out))[f"bundle_emb.{name}.string_to_param.*"], vector)
    assert describe(str(out))["bundled_embeddings"] == [name]
    baked = api.realize(out, "1,0")
    assert torch.equal(baked.embeddings[f"bundle_emb.{name}.string_to_param.*"], vector)
