"""Half-precision inputs and outputs: computation is float32 whatever the files hold, and each output
factor is rounded once to the save dtype."""
import pytest
import torch

from delta_oracle import dense_deltas, raw_modules
from lora_factory import make_lora
from lora_merge_ext import api

KEEP = lambda n: n.endswith(("layers_0_self_attn_q_proj", "layers_1_mlp_fc2", "attentions_0_transformer_blocks_0_attn1_to_q",
                             "down_blocks_0_resnets_0_conv1", "mid_block_attentions_0_proj_in"))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture
def half_pair(tmp_path):
    """An fp16 file and a bf16 file of different ranks and alphas (LoCon, so 3×3 convolutions too)."""
    a = make_lora(tmp_path / "a16.safetensors", "sd15_locon", rank=4, alpha=3.0, seed=1, keep=KEEP, dtype=torch.float16)
    b = make_lora(tmp_path / "b16.safetensors", "sd15_locon", rank=2, alpha=None, seed=2, keep=KEEP, dtype=torch.bfloat16)
    return a, b


def _svd_rank(mode, rank):
    return {"rank": rank} if mode == "svd" else {}


def _target(paths, weights):
    out = {}
    for path, w in zip(paths, weights):
        for name, delta in dense_deltas(path).items():
            out[name] = out.get(name, 0) + w * delta
    return out


def _max_relative(got, want):
    assert set(got) == set(want)
    return max(((got[n] - want[n]).abs().max() / want[n].abs().max()).item() for n in want)


@pytest.mark.parametrize("mode", ["concat", "svd"])
def test_half_inputs_merge_in_float32(half_pair, tmp_path, mode):
    """Saved as fp32, the merge of fp16/bf16 files is exact to float32 precision, not to half precision."""
    a, b = half_pair
    result = api.merge([a, b], mode=mode, weights=[0.7, -1.3], **_svd_rank(mode, 6))
    got = dense_deltas(api.save(result.lora, tmp_path / "out.safetensors").path)
    assert _max_relative(got, _target([a, b], [0.7, -1.3])) < 2e-5  # fp16 rounding alone would be ~5e-4


def test_half_inputs_add_in_float32(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, alpha=2.0, seed=1, keep=KEEP, dtype=torch.float16)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, alpha=8.0, seed=2, keep=KEEP, dtype=torch.bfloat16)
    result = api.merge([a, b], mode="add", weights=[0.8, -0.6])
    saved = raw_modules(api.save(result.lora, tmp_path / "out.safetensors").path)
    ra, rb = raw_modules(a), raw_modules(b)
    for name in ra:
        for role in ("lora_up.weight", "lora_down.weight"):
            want = 0.8 * ra[name][role] + 2.0 * -0.6 * rb[name][role]  # c = √(8/2)
            assert torch.allclose(saved[name][role], want, rtol=1e-6, atol=1e-7), (name, role)


@pytest.mark.parametrize("mode", ["concat", "svd", "add"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_each_factor_is_rounded_once_to_the_save_dtype(half_pair, tmp_path, mode, dtype):
    """Merging straight into fp16/bf16 gives bit for bit the float32 merge rounded to that dtype."""
    a, b = half_pair
    if mode == "add":
        b = make_lora(tmp_path / "b4.safetensors", "sd15_locon", rank=4, alpha=1.0, seed=5, keep=KEEP, dtype=torch.float32)
    wide = api.merge([a, b], mode=mode, weights=[0.7, -1.3], **_svd_rank(mode, 3))
    narrow = api.merge([a, b], mode=mode, weights=[0.7, -1.3], **_svd_rank(mode, 3), dtype=dtype)
    for name, m in wide.lora.modules.items():
        n = narrow.lora.modules[name]
        assert n.up.dtype == n.down.dtype == DTYPES[dtype]
        assert torch.equal(n.up, m.up.to(DTYPES[dtype])) and torch.equal(n.down, m.down.to(DTYPES[dtype])), name
        assert n.alpha == m.alpha


def test_report_measures_the_rounded_factors(half_pair):
    """The svd report of an fp16 result includes the fp16 rounding (what is saved is what is measured)."""
    a, b = half_pair
    wide = api.merge([a, b], mode="svd", rank=6).report  # rank 6 covers both inputs: exact in float32
    narrow = api.merge([a, b], mode="svd", rank=6, dtype="fp16").report
    assert wide.summary()["max_error"] < 1e-5
    assert 1e-5 < narrow.summary()["max_error"] < 5e-3


def test_numeric_lbw_does_not_need_the_preset_file(half_pair, monkeypatch, tmp_path):
    """merge and realize read preset.txt only for a preset name."""
    from lora_merge_ext import presets
    from lora_merge_ext.errors import LoraMergeError
    monkeypatch.setattr(presets, "DEFAULT_PATH", tmp_path / "no_preset.txt")
    a, b = half_pair
    lbw = "1,0.5,0.25,1,0,1,1,1,1,1,1,1,1,1,1,1,1"
    joined = api.merge([a, b], lbw=[lbw, ""]).lora
    api.realize(joined, "1,0", lbw=lbw)
    for call in (lambda: api.merge([a, b], lbw=["MIDD", ""]), lambda: api.realize(joined, "1,0", lbw="MIDD")):
        with pytest.raises(LoraMergeError, match="cannot read the preset file"):
            call()


def test_one_lbw_string_applies_to_every_input(half_pair):
    a, b = half_pair
    as_string = api.merge([a, b], lbw="MIDD").lora
    as_list = api.merge([a, b], lbw=["MIDD"]).lora
    for name, m in as_list.modules.items():
        assert torch.equal(m.up, as_string.modules[name].up) and torch.equal(m.down, as_string.modules[name].down)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=[1.0, float("nan")]), "is not a number"),
    (dict(sigma="1,0", te=float("nan")), "te multiplier"),
    (dict(sigma="1,0", unet=float("inf")), "unet multiplier"),
])
def test_realize_refuses_non_finite_values(half_pair, kwargs, message):
    from lora_merge_ext.errors import LoraMergeError
    a, b = half_pair
    joined = api.merge([a, b]).lora
    with pytest.raises(LoraMergeError, match=message):
        api.realize(joined, **kwargs)


def test_realize_takes_sigma_lists_per_component_or_per_rank(half_pair):
    a, b = half_pair  # ranks 4 and 2
    joined = api.merge([a, b]).lora
    per_component = api.realize(joined, [0.5, 2.0]).modules
    per_rank = api.realize(joined, [0.5] * 4 + [2.0] * 2).modules
    text = api.realize(joined, "0.5,2").modules
    for name, m in text.items():
        assert torch.equal(per_component[name].up, m.up) and torch.equal(per_rank[name].down, m.down)


@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("option", [dict(rank=2), dict(conv_rank=2), dict(energy=0.9)])
def test_svd_options_outside_svd_are_refused(half_pair, mode, option):
    from lora_merge_ext.errors import LoraMergeError
    with pytest.raises(LoraMergeError, match="only applies to svd merges"):
        api.merge(list(half_pair), mode=mode, **option)


@pytest.mark.parametrize("options, message", [
    (dict(mode="add", rank=2), "rank only applies to svd merges"),
    (dict(mode="svd", energy=1.5), r"energy 1.5 must be a fraction in \(0, 1\]"),
    (dict(mode="svd", rank=0), "rank 0 must be a positive whole number"),
    (dict(weights=[1, 2, 3]), "got 3 weights for 2 inputs"),
    (dict(lbw=["ALL", "ALL", "ALL"]), "got 3 lbw specs for 2 inputs"),
])
def test_bad_options_are_refused_before_any_file_is_read(tmp_path, options, message):
    """The inputs do not exist: the option is what is reported (no file read, no hash started)."""
    from lora_merge_ext.errors import LoraMergeError
    missing = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    with pytest.raises(LoraMergeError, match=message):
        api.merge(missing, **options)
    with pytest.raises(LoraMergeError, match=message):
        api.merge_to_file(missing, tmp_path / "out.safetensors", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, message", [
    (dict(rank=True), "rank True is not a number"),
    (dict(rank="2"), "rank '2' is not a number"),
    (dict(conv_rank=float("nan")), "conv rank nan must be a positive whole number"),
    (dict(energy=True), "energy True is not a number"),
])
def test_svd_options_of_the_wrong_type_are_refused(half_pair, options, message):
    from lora_merge_ext.errors import LoraMergeError
    with pytest.raises(LoraMergeError, match=message):
        api.merge(list(half_pair), mode="svd", **options)


def test_provenance_records_the_ranks_an_svd_merge_used(half_pair):
    """Without rank, svd aims at the largest input rank; the provenance says which (not null)."""
    import json
    result = api.merge(list(half_pair), mode="svd")
    provenance = json.loads(result.lora.metadata["ljl_provenance"])
    largest = max(api.load(p).max_rank for p in half_pair)
    assert (provenance["rank"], provenance["conv_rank"], provenance["energy"]) == (largest, largest, None)
    chosen = json.loads(api.merge(list(half_pair), mode="svd", rank=2, conv_rank=1).lora.metadata["ljl_provenance"])
    assert (chosen["rank"], chosen["conv_rank"]) == (2, 1)
