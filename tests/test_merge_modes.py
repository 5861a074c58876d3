"""concat / add / svd against ΔW computed independently from the raw files."""
import json

import pytest
import torch

from delta_oracle import dense_deltas, factor_17
from lora_factory import make_lora, make_tensors, write_lora
from lora_merge_ext import api
from lora_merge_ext.errors import LoraMergeError

SMALL_MODULES = ("layers_0_self_attn_q_proj", "layers_0_mlp_fc1", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "mid_block_attentions_0_transformer_blocks_0_attn1_to_q", "down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k",
                 "up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k", "down_blocks_1_attentions_1_proj_in",
                 "down_blocks_0_resnets_0_conv1", "down_blocks_0_downsamplers_0_conv")
SMALL = lambda n: n.endswith(SMALL_MODULES)  # a few modules of every kind and size keep the dense oracle fast


def merged_deltas(result, tmp_path, name="out.safetensors"):
    saved = api.save(result.lora, tmp_path / name)
    return dense_deltas(saved.path)


def target(paths, weights, factors=None):
    """T(m) = Σ_k w_k·b_k(m)·ΔW_k(m) over the union of modules."""
    out = {}
    for k, (path, w) in enumerate(zip(paths, weights)):
        for name, delta in dense_deltas(path).items():
            b = factors[k](name) if factors and factors[k] else 1.0
            out[name] = out.get(name, 0) + w * b * delta
    return out


def assert_close(got, want, rtol=2e-5):
    assert set(got) == set(want)
    for name in want:
        scale = want[name].abs().max().item() + 1e-12
        err = (got[name] - want[name]).abs().max().item() / scale
        assert err < rtol, f"{name}: relative error {err}"


@pytest.fixture
def pair(tmp_path):
    """Mixed ranks, mixed alphas, one input without alpha, partial module overlap, LoCon convs."""
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, alpha=3.0, seed=1, keep=SMALL)
    b = make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=lambda n: 8 if n.startswith("lora_te") else 2, alpha=None,
                  seed=2, keep=lambda n: SMALL(n) and "attn2" not in n)
    return a, b


@pytest.mark.parametrize("mode", ["concat", "join", "ljl"])
def test_concat_is_exact_with_negative_weights(pair, tmp_path, mode):
    a, b = pair
    result = api.merge([a, b], mode=mode, weights=[0.7, -1.3])
    assert_close(merged_deltas(result, tmp_path), target([a, b], [0.7, -1.3]))
    assert result.report.summary()["max_error"] is None  # a concat is exact by construction: not measured
    measured = api.merge([a, b], mode=mode, weights=[0.7, -1.3], report=True).report.summary()
    assert measured["max_error"] < 1e-5


def test_concat_ranks_add_up_and_layout_is_recorded(pair, tmp_path):
    a, b = pair
    lora = api.merge([a, b]).lora
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k = "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k"  # only in a
    assert lora.modules[q].rank == 4 + 2 and lora.modules[k].rank == 4
    from lora_merge_ext.layout import layout_of
    layout = layout_of(lora)
    assert [(c.name, c.rank) for c in layout.components] == [("a", 4), ("b", 8)]
    assert layout.ranks_of(q) == [4, 2] and layout.ranks_of(k) == [4, 0]


def test_module_in_one_input_is_carried_exactly_in_add(pair, tmp_path):
    a, b = pair
    # a and b have different ranks in shared modules, so add refuses them …
    with pytest.raises(LoraMergeError, match="equal ranks"):
        api.merge([a, b], mode="add")
    # … while modules of one input only are carried over exactly:
    c = make_lora(tmp_path / "c.safetensors", "sd15_locon", rank=4, alpha=1.0, seed=3,
                  keep=lambda n: SMALL(n) and "attn1" in n)
    result = api.merge([a, c], mode="add", weights=[-0.5, 2.0])
    got = merged_deltas(result, tmp_path)
    want = target([a], [-0.5])
    only_a = [n for n in want if "attn1" not in n]
    assert only_a
    assert_close({n: got[n] for n in only_a}, {n: want[n] for n in only_a})


def test_add_is_the_classic_factor_sum(tmp_path):
    """up = w1·U1 + c·w2·U2, down = w1·D1 + c·w2·D2, c = √(α2/α1), alpha = α1 (DESIGN §3)."""
    keep = lambda n: "layers_0_" in n or "attn1_to_q" in n or "down_blocks_0_resnets_0_conv1" in n
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, alpha=2.0, seed=1, keep=keep)
    b = make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=4, alpha=8.0, seed=2, keep=keep)
    w1, w2 = 0.8, -0.6
    result = api.merge([a, b], mode="add", weights=[w1, w2])
    got = merged_deltas(result, tmp_path)
    from delta_oracle import raw_modules
    ra, rb = raw_modules(a), raw_modules(b)
    c = (8.0 / 2.0) ** 0.5
    for name in ra:
        up = w1 * ra[name]["lora_up.weight"] + c * w2 * rb[name]["lora_up.weight"]
        down = w1 * ra[name]["lora_down.weight"] + c * w2 * rb[name]["lora_down.weight"]
        want = (2.0 / 4) * torch.einsum("or,r...->o...", up.reshape(up.shape[0], 4), down)
        assert torch.allclose(got[name], want, rtol=1e-5, atol=1e-7), name
    # the report measures the distance to the exact target, which add does not reach
    t = target([a, b], [w1, w2])
    name = next(iter(t))
    err = ((got[name] - t[name]).norm() / t[name].norm()).item()
    row = next(r for r in result.report.rows if r.module == name)
    assert row.error == pytest.approx(err, rel=1e-4) and err > 0.01


@pytest.mark.parametrize("alpha", [0.0, -2.0])
def test_add_refuses_alphas_its_formula_cannot_take(tmp_path, alpha):
    """√(α2/α1) needs positive alphas: a zero or negative one is a one-line error naming the module
    (concat and svd merge such files exactly)."""
    keep = lambda n: "attn1_to_q" in n
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, alpha=alpha, seed=1, keep=keep)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, alpha=2.0, seed=2, keep=keep)
    for pair in ([a, b], [b, a]):
        with pytest.raises(LoraMergeError, match="add mode needs positive alphas; module lora_unet_.*attn1_to_q"):
            api.merge(pair, mode="add")
    t = target([a, b], [1.0, 1.0])
    got = merged_deltas(api.merge([a, b], mode="concat"), tmp_path)
    for name in t:
        assert torch.allclose(got[name], t[name], rtol=1e-5, atol=1e-7)


def _singular_values(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(t.reshape(t.shape[0], -1).float()).double()


def _best_error(t: torch.Tensor, rank: int) -> float:
    """Eckart–Young: the smallest ‖X − T‖/‖T‖ over rank-n matrices X."""
    s = _singular_values(t)
    return float((s[rank:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt())


def test_svd_is_the_best_rank_n_approximation(pair, tmp_path):
    a, b = pair
    result = api.merge([a, b], mode="svd", weights=[1.0, -0.5], rank=3, conv_rank=2)
    got = merged_deltas(result, tmp_path)
    want = target([a, b], [1.0, -0.5])
    for name, t in want.items():
        mod = result.lora.modules[name]
        n = 2 if mod.kernel == (3, 3) else 3
        assert mod.rank == n
        err = ((got[name] - t).norm() / t.norm()).item()
        assert err <= _best_error(t, n) * (1 + 1e-3) + 1e-6, name
        row = next(r for r in result.report.rows if r.module == name)
        assert row.error == pytest.approx(err, rel=1e-3, abs=1e-6)


def test_svd_is_exact_when_rank_covers_the_inputs(pair, tmp_path):
    a, b = pair
    result = api.merge([a, b], mode="svd", weights=[2.0, 0.25], rank=16)
    assert_close(merged_deltas(result, tmp_path), target([a, b], [2.0, 0.25]), rtol=1e-4)
    assert all(m.rank <= 16 for m in result.lora.modules.values())


def test_svd_of_inputs_that_cancel_writes_zeros_and_reports_no_error(pair, tmp_path):
    """A LoRA merged with its own negation: ΔW is 0, as concat and add give; svd used to write float32
    noise and report an infinite error."""
    a, _ = pair
    result = api.merge([a, a], mode="svd", weights=[0.8, -0.8], rank=4, conv_rank=2)
    for name, delta in merged_deltas(result, tmp_path).items():
        assert delta.abs().max().item() == 0.0, name
    summary = result.report.summary()
    assert (summary["mean_error"], summary["max_error"]) == (0.0, 0.0)


def test_svd_keeps_a_small_input_above_round_off(pair, tmp_path):
    """Only singular values at float32 round-off are dropped: an input at weight 1e-4 beside one at
    weight 1 is still reproduced at full rank (its ΔW is 1e-4 of the other's, far above round-off)."""
    a, b = pair
    weights = [1.0, 1e-4]
    result = api.merge([a, b], mode="svd", weights=weights, rank=16)
    got, want = merged_deltas(result, tmp_path), target([a, b], weights)
    small = target([b], [1e-4])
    for name in small:
        if name in target([a], [1.0]):
            err = ((got[name] - want[name]).norm() / small[name].norm()).item()
            assert err < 2e-2, f"{name}: the small input's part is off by {err}"
    assert result.report.summary()["max_error"] < 1e-5


@pytest.mark.parametrize("share, rank", [(0.9, 12), (0.999, None), (0.999, 3)])
def test_svd_dynamic_rank_keeps_the_energy_up_to_the_rank(pair, tmp_path, share, rank):
    """The rank caps an energy share; without one the cap is the largest input rank (8 here)."""
    a, b = pair
    result = api.merge([a, b], mode="svd", energy=share, rank=rank)
    got = merged_deltas(result, tmp_path)
    want = target([a, b], [1.0, 1.0])
    cap = 8 if rank is None else rank
    capped = 0
    for name, t in want.items():
        s = _singular_values(t)
        energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        n = int((energy < share).sum()) + 1
        capped += n > cap
        n = min(n, cap)
        assert result.lora.modules[name].rank == n, name
        assert ((got[name] - t).norm() / t.norm()).item() <= _best_error(t, n) * (1 + 1e-3) + 1e-6
    assert (capped > 0) == (share == 0.999)  # the cap binds where the share asks for more


def test_lbw_folds_into_the_weights(pair, tmp_path):
    a, b = pair
    va = [1, 0.5, 0, 1, 1, 0.25, 1, 2, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    spec = ",".join(str(v) for v in va)
    result = api.merge([a, b], mode="concat", weights=[1.0, 0.5], lbw=[spec, "MIDD"])
    midd = [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # lora-block-weight's MIDD
    want = target([a, b], [1.0, 0.5], [lambda n: factor_17(va, n), lambda n: factor_17(midd, n)])
    got = merged_deltas(result, tmp_path)
    assert_close(got, want)


def test_peft_and_kohya_sdxl_files_merge_module_by_module(tmp_path):
    keep = lambda n: ("te2_text_model_encoder_layers_3_" in n or "te1_text_model_encoder_layers_0_self" in n
                      or "input_blocks_4_1_transformer_blocks_0" in n or "middle_block_1_transformer_blocks_2_attn2" in n
                      or "output_blocks_5_1_transformer_blocks_1_attn1" in n)
    tensors = make_tensors("sdxl_lora", rank=4, alpha=2.0, seed=5, keep=keep)
    kohya = write_lora(tmp_path / "k.safetensors", tensors, "sdxl")
    from lora_factory import to_peft
    peft = write_lora(tmp_path / "p.safetensors", to_peft(make_tensors("sdxl_lora", rank=4, alpha=2.0, seed=6, keep=keep),
                                                          "sdxl"), None)
    plora = api.load(peft)
    assert plora.family == "sdxl"
    assert set(plora.modules) == set(api.load(kohya).modules)
    result = api.merge([kohya, peft], weights=[1.0, -1.0])
    got = merged_deltas(result, tmp_path)
    other = dense_deltas(write_lora(tmp_path / "k6.safetensors", make_tensors("sdxl_lora", rank=4, alpha=2.0, seed=6,
                                                                              keep=keep), "sdxl"))
    want = {n: d - other[n] for n, d in dense_deltas(kohya).items()}
    assert_close(got, want)


def test_mixing_families_is_refused(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", keep=lambda n: "layers_0_" in n or "attn2_to_k" in n)
    x = make_lora(tmp_path / "x.safetensors", "sdxl_lora", keep=lambda n: "layers_0_" in n or "attn2_to_k" in n)
    with pytest.raises(LoraMergeError, match="cannot merge SD1 and SDXL"):
        api.merge([a, x])


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": [1, 2, 3]}, "3 weights for 2 inputs"),
    ({"weights": [1, float("nan")]}, "not a finite number"),
    ({"lbw": ["ALL", "ALL", "ALL"]}, "3 lbw specs for 2 inputs"),
    ({"lbw": ["1,1,1"]}, "3"),
    ({"lbw": ["NOPE"]}, "NOPE"),
    ({"mode": "average"}, "average"),
    ({"mode": "svd", "rank": 0}, "positive whole number"),
    ({"mode": "svd", "energy": 1.5}, "energy"),
    ({"device": "tpu"}, "tpu"),
    ({"weights": "1,x"}, "expected numbers"),
    ({"weights": [1, None]}, "expected numbers"),
])
def test_bad_merge_options_are_refused(pair, kwargs, message):
    with pytest.raises(LoraMergeError, match=message):
        api.merge(list(pair), **kwargs)


def test_script_numbers_are_taken_as_the_cli_takes_them(pair, tmp_path):
    """A whole float or a numpy number as rank, a weight string as on the command line."""
    np = pytest.importorskip("numpy")
    plain = api.merge(list(pair), mode="svd", rank=3, energy=0.9, weights=[1, -0.5])
    def facts(result):
        record = json.loads(result.lora.metadata["ljl_provenance"])
        return [record[k] for k in ("inputs", "rank", "conv_rank", "energy")]

    for rank, energy, weights in [(3.0, 0.9, "1,-0.5"), (np.int64(3), np.float64(0.9), np.array([1, -0.5]))]:
        result = api.merge(list(pair), mode="svd", rank=rank, energy=energy, weights=weights)
        assert facts(result) == facts(plain)
        for name, module in plain.lora.modules.items():
            torch.testing.assert_close(result.lora.modules[name].delta(), module.delta())
    saved, _ = api.merge_to_file(list(pair), tmp_path / "np.safetensors", mode="svd", rank=np.int32(3))
    assert json.loads(api.load(saved.path).metadata["ljl_provenance"])["rank"] == 3


def test_no_inputs_is_a_clear_error():
    for mode in ("svd", "concat"):
        with pytest.raises(LoraMergeError, match="at least"):
            api.merge([], mode=mode)


def test_cuda_request_without_gpu_says_so(pair):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LoraMergeError, match="no CUDA GPU"):
        api.merge(list(pair), device="cuda")


def test_a_lora_with_no_modules_is_not_saved(pair, tmp_path):
    """Σ = 0 switches every rank off: realize gives an empty LoRA, which save refuses (no loader reads
    a LoRA without modules) instead of writing it."""
    joined = tmp_path / "j.safetensors"
    api.save(api.merge(list(pair), mode="concat").lora, joined)
    empty = api.realize(joined, "0")
    assert not empty.modules
    with pytest.raises(LoraMergeError, match="no modules"):
        api.save(empty, tmp_path / "empty.safetensors")
    assert not (tmp_path / "empty.safetensors").exists()


def test_weights_that_overflow_float32_are_a_one_line_error(pair):
    """Before: svd raised torch's LinAlgError (a traceback); the weighted factors are checked first."""
    a, _ = pair
    for mode in ("svd", "add"):
        with pytest.raises(LoraMergeError, match="the weighted factors overflow float32; use smaller weights"):
            api.merge([a, a], mode=mode, weights=[1e300, 1e300])
    with pytest.raises(LoraMergeError, match="the SVD failed on values too large for float32; use smaller weights"):
        api.merge([a, a], mode="svd", weights=[1e38, 1e38])  # finite factors, an overflow inside the QR


def test_an_fp32_overflow_does_not_suggest_saving_as_fp32(pair, tmp_path):
    a, _ = pair
    result = api.merge([a, a], mode="add", weights=[1e300, 1e300], report=False)
    with pytest.raises(LoraMergeError, match=r"values too large for fp32 in .*\); use smaller weights$"):
        api.save(result.lora, tmp_path / "big.safetensors")
    with pytest.raises(LoraMergeError, match="save as fp32 or bf16, or use smaller weights"):
        api.save(api.merge([a, a], mode="add", weights=[1e5, 1e5], report=False).lora, tmp_path / "h.safetensors",
                 dtype="fp16")


def test_a_result_where_the_target_is_zero_is_named_in_the_report_not_averaged():
    """A module whose target is 0 but whose result is not has an infinite relative error: the summary
    counts it apart and keeps it out of the mean."""
    from lora_merge_ext.merge_report import MergeReport, ReportRow
    report = MergeReport("svd", rows=[ReportRow("lora_unet_a", 4, 0.01), ReportRow("lora_unet_b", 4, float("inf"))])
    s = report.summary()
    assert (s["cancelled"], s["mean_error"], s["max_error"]) == (1, 0.01, float("inf"))
    assert "1 modules where the weighted inputs cancel to 0" in report.format()


def test_component_names_avoid_the_characters_of_the_sigma_syntax(pair, tmp_path):
    """A file named style,v2 becomes component style_v2, which a Σ vector can name."""
    import shutil
    a, b = pair
    odd = tmp_path / "style,v2=x.safetensors"
    shutil.copy(b, odd)
    result = api.merge([a, odd])
    from lora_merge_ext.layout import layout_of
    assert [c.name for c in layout_of(result.lora).components] == ["a", "style_v2_x"]
    only_b = api.realize(result.lora, "style_v2_x=1")
    assert only_b.modules and all(m.rank == api.load(b).modules[n].rank for n, m in only_b.modules.items())


@pytest.mark.parametrize("peft", [True, False])
def test_an_sdxl_unet_file_in_diffusers_names_without_cross_attention_is_sdxl(tmp_path, peft):
    """No attn2 to_k/to_v to measure and no metadata: the second transformer block, or attention in the
    first up block, exists only in SDXL's UNet.  The names map to SGM, so the file merges with kohya's."""
    from lora_factory import to_peft
    def keep(n):
        return "input_blocks_7_1_transformer_blocks_1_attn1" in n or "output_blocks_2_1_transformer_blocks_0_ff" in n
    kohya = write_lora(tmp_path / "k.safetensors", make_tensors("sdxl_lora", rank=2, seed=5, keep=keep), "sdxl")
    converted = to_peft(make_tensors("sdxl_lora", rank=2, seed=6, keep=keep), "sdxl")
    if not peft:  # kohya keys with diffusers module names: lora_unet_down_blocks_2_….lora_down.weight
        roles = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}
        converted = {"lora_unet_" + module.replace(".", "_") + "." + roles[role]: v
                     for (module, _, role), v in ((k.removeprefix("unet.").partition(".lora_"), v)
                                                  for k, v in converted.items())}
    assert not any("attn2" in k or "input_blocks" in k for k in converted)
    other = write_lora(tmp_path / "d.safetensors", converted, None)
    lora = api.load(other)
    assert lora.family == "sdxl" and set(lora.modules) == set(api.load(kohya).modules)
    result = api.merge([kohya, other], lbw=",".join(["1"] * 12))  # an SDXL lbw fits it
    assert json.loads(result.lora.metadata["ljl_provenance"])["mode"] == "concat"
    assert result.lora.metadata["ss_base_model_version"].startswith("sdxl")


@pytest.mark.parametrize("mode", ["concat", "add", "svd"])
@pytest.mark.parametrize("weights, lbw", [([0.0, 0.0], None), ([1.0, -0.5], "NONE"), ([0.0, 1.0], [None, "NONE"])])
def test_a_merge_that_would_change_nothing_is_refused(pair, tmp_path, mode, weights, lbw):
    """Every module at weight 0 (a typo'd preset, both weights 0): refused, as a bake that switches every
    rank off is, before anything is written."""
    out = tmp_path / "nothing.safetensors"
    with pytest.raises(LoraMergeError, match="every module gets weight 0"):
        api.merge_to_file(list(pair), out, mode=mode, weights=weights, lbw=lbw)
    assert not out.exists()
    if mode != "add":  # (this pair's ranks differ: add refuses it for that)
        api.merge_to_file(list(pair), out, mode=mode, weights=[0.0, 1.0])  # one input off is a fine merge
