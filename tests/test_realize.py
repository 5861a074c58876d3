"""realize and live Σ: ΔW = f(m)·s·U·diag(v)·D, checked against the raw factors."""
import pytest
import torch

from delta_oracle import factor_17, raw_modules
from lora_factory import make_lora
from lora_merge_ext import api
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.live_sigma import apply_lora, set_lora_diag

KEEP = lambda n: "layers_2_self_attn_v" in n or "attn1_to_k" in n or "down_blocks_1_resnets_1_conv1" in n


@pytest.fixture
def joined(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, alpha=2.0, seed=1, keep=KEEP)
    b = make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=2, alpha=None, seed=2, keep=KEEP)
    saved = api.save(api.merge([a, b]).lora, tmp_path / "j.safetensors")
    return a, b, saved.path


def sigma_delta(raw, v, factor=1.0):
    """s·U·diag(v)·D from the raw tensors of one module."""
    down, up = raw["lora_down.weight"], raw["lora_up.weight"]
    r = down.shape[0]
    s = float(raw["alpha"]) / r if "alpha" in raw else 1.0
    v = torch.tensor(v[:r], dtype=torch.float64)
    return factor * s * torch.einsum("or,r...->o...", up.reshape(up.shape[0], r) * v, down)


def realized_deltas(lora, tmp_path, name="r.safetensors"):
    path = api.save(lora, tmp_path / name).path
    return {n: sigma_delta(w, [1.0] * w["lora_down.weight"].shape[0]) for n, w in raw_modules(path).items()}


@pytest.mark.parametrize("sigma, wa, wb", [("1,0", 1, 0), ("0,1", 0, 1), ("0.5,-1", 0.5, -1), ("2", 2, 2)])
def test_realize_per_component_equals_weighted_inputs(joined, tmp_path, sigma, wa, wb):
    a, b, j = joined
    got = realized_deltas(api.realize(j, sigma), tmp_path)
    ra, rb = raw_modules(a), raw_modules(b)
    for n in ra:
        want = wa * sigma_delta(ra[n], [1] * 4) + wb * sigma_delta(rb[n], [1] * 2)
        if wa == 0 and wb == 0:
            assert n not in got
        else:
            assert torch.allclose(got[n], want, rtol=1e-5, atol=1e-7), n


def test_realize_per_rank_with_lbw_and_multipliers(joined, tmp_path):
    a, b, j = joined
    v = [1, 0, -2, 0.5, 3, 0]
    lbw = "1,0.5,0.25,1,0,1,1,1,1,1,1,1,1,1,1,1,1"
    got = realized_deltas(api.realize(j, ",".join(map(str, v)), lbw=lbw, te=0.5, unet=2.0), tmp_path)
    ra, rb = raw_modules(a), raw_modules(b)
    values = [float(x) for x in lbw.split(",")]
    for n in ra:
        mult = 0.5 if n.startswith("lora_te") else 2.0
        want = mult * factor_17(values, n) * (sigma_delta(ra[n], v[:4]) + sigma_delta(rb[n], v[4:]))
        if factor_17(values, n) == 0:
            assert n not in got
        else:
            assert torch.allclose(got[n], want, rtol=1e-5, atol=1e-7), n
    # ranks whose Σ entry is 0 are dropped; the rest keep the module exact
    assert all(m.rank <= 4 for m in api.realize(j, ",".join(map(str, v))).modules.values())


def test_realize_on_a_plain_lora_is_one_component(joined, tmp_path):
    a, _, _ = joined
    got = realized_deltas(api.realize(a, "1,0,0,2"), tmp_path)
    ra = raw_modules(a)
    for n in ra:
        assert torch.allclose(got[n], sigma_delta(ra[n], [1, 0, 0, 2]), rtol=1e-5, atol=1e-7)


def test_realize_refuses_a_wrong_length(joined):
    with pytest.raises(LoraMergeError, match="expected 1, 2 .* or 6"):
        api.realize(joined[2], "1,0,1")


class TinyUNet(torch.nn.Module):
    """Layers named like SD1's UNet (diffusers paths), so kohya names find them."""

    def __init__(self):
        super().__init__()
        blocks = torch.nn.Module()
        self.down_blocks = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
        attn = torch.nn.Module()
        attn.to_k = torch.nn.Linear(320, 320, bias=False)
        tb = torch.nn.Module()
        tb.attn1 = attn
        at = torch.nn.Module()
        at.transformer_blocks = torch.nn.ModuleList([tb])
        self.down_blocks[0].attentions = torch.nn.ModuleList([at])
        res = torch.nn.Module()
        res.conv1 = torch.nn.Conv2d(640, 640, 3, padding=1)
        self.down_blocks[1].resnets = torch.nn.ModuleList([torch.nn.Module(), res])
        del blocks

    def forward(self, x, img):
        return self.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k(x), self.down_blocks[1].resnets[1].conv1(img)


def test_live_sigma_matches_realize_and_can_change(joined):
    _, _, j = joined
    lora = api.load(j)
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    plain = model(x, img)
    apply_lora(model, lora, "1,0")
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    c = "lora_unet_down_blocks_1_resnets_1_conv1"

    def expected(sigma):
        r = api.realize(lora, sigma)
        dk = r.modules[k].delta() if k in r.modules else torch.zeros(320, 320)
        dc = r.modules[c].delta() if c in r.modules else torch.zeros(640, 640, 3, 3)
        return plain[0] + x @ dk.T, plain[1] + torch.nn.functional.conv2d(img, dc, padding=1)

    for sigma in ["1,0", "0,1", "2*6", "1,0,0,0,0,-1", "0"]:
        set_lora_diag(model, sigma)
        got, want = model(x, img), expected(sigma)
        assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got[1], want[1], atol=1e-4), sigma
    model._ljl_live_lora.remove()
    assert torch.equal(model(x, img)[0], plain[0])


def test_live_sigma_reads_numbers_lists_and_tensors_like_the_text_forms(joined):
    """One Σ parser (DESIGN §4) for every form: a number is uniform, a list as long as the components
    is per component, nan/inf are refused with a one-line error instead of poisoning the model."""
    _, _, j = joined
    lora = api.load(j)
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    live = apply_lora(model, lora, 0.5)
    want = model(x, img)
    import numpy as np
    for same in ("0.5", [0.5], torch.tensor(0.5), "0.5,0.5", [0.5] * 6, np.full(6, 0.5)):
        set_lora_diag(live, same)
        got = model(x, img)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), same
    set_lora_diag(model, torch.tensor([1.0, 0.0]))
    per_component = model(x, img)
    set_lora_diag(model, "1,0")
    assert torch.equal(model(x, img)[0], per_component[0])
    for bad in (float("nan"), [1.0, float("inf")], torch.tensor([float("nan")] * 6), object()):
        with pytest.raises(LoraMergeError, match="Σ"):
            set_lora_diag(model, bad)
    with pytest.raises(LoraMergeError, match="expected 1, 2 .* or 6"):
        set_lora_diag(model, [1.0, 0.0, 1.0])
    live.remove()


def test_a_bad_sigma_in_apply_lora_leaves_the_model_as_it_was(joined):
    _, _, j = joined
    lora = api.load(j)
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    plain = model(x, img)
    with pytest.raises(LoraMergeError, match="has 3 values"):
        apply_lora(model, lora, "1,2,3")
    assert torch.equal(model(x, img)[0], plain[0])          # no LoRA half-applied at Σ=1
    with pytest.raises(LoraMergeError, match="no LoRA was applied"):
        set_lora_diag(model, "1")
    apply_lora(model, lora, "1,0")
    before = model(x, img)
    with pytest.raises(LoraMergeError, match="unknown lbw preset"):
        apply_lora(model, lora, "0,1", lbw="NO_SUCH_PRESET")
    with pytest.raises(LoraMergeError):
        apply_lora(model, lora, "0,1,2")
    assert torch.equal(model(x, img)[0], before[0])         # the LoRA applied before stays as it was
    model._ljl_live_lora.remove()
    assert torch.equal(model(x, img)[0], plain[0])


def test_live_lbw_numbers_do_not_need_the_preset_file(joined, monkeypatch, tmp_path):
    from lora_merge_ext import presets
    monkeypatch.setattr(presets, "DEFAULT_PATH", tmp_path / "no_preset.txt")
    _, _, j = joined
    lora = api.load(j)
    model = TinyUNet()
    lbw = "1,0.5,0.25,1,0,1,1,1,1,1,1,1,1,1,1,1,1"
    live = apply_lora(model, lora, "1,0", lbw=lbw)
    from lora_merge_ext.layout import layout_of
    from lora_merge_ext.lbw import parse_lbw
    from lora_merge_ext.realize import realize_lora
    from lora_merge_ext.sigma import parse_sigma
    layout = layout_of(lora)
    want = realize_lora(lora, layout, parse_sigma("1,0", layout), parse_lbw(lbw, lora.family)).modules
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    x = torch.randn(5, 320)
    layer = model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k
    assert torch.allclose(layer(x), x @ (layer.weight + want[k].delta()).T, atol=1e-4)
    with pytest.raises(LoraMergeError, match="cannot read the preset file"):
        apply_lora(model, lora, "1,0", lbw="MIDD")             # a name does need it, and says so
    live.remove()


class TinyClip(torch.nn.Module):
    """One CLIP attention projection, named as kohya names text-encoder layers (text_model.…)."""

    def __init__(self, width):
        super().__init__()
        self.text_model = torch.nn.Module()
        self.text_model.encoder = torch.nn.Module()
        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Module()
        layer.self_attn.q_proj = torch.nn.Linear(width, width, bias=False)
        self.text_model.encoder.layers = torch.nn.ModuleList([layer])

    def forward(self, x):
        return self.text_model.encoder.layers[0].self_attn.q_proj(x)


def test_live_sigma_on_an_sdxl_text_encoder_takes_the_module_that_fits(tmp_path):
    """lora_te1_… (CLIP-L, 768) and lora_te2_… (OpenCLIP-G, 1280) share the layer's name; each text
    encoder gets the one of its width, and a layer of neither width is refused, not broken at forward."""
    path = make_lora(tmp_path / "xl.safetensors", "sdxl_lora", rank=2, seed=3,
                     keep=lambda n: n.endswith("encoder_layers_0_self_attn_q_proj"))
    lora = api.load(path)
    assert {n for n in lora.modules} == {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                                         "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"}
    for width, prefix in ((768, "lora_te1_"), (1280, "lora_te2_")):
        model = TinyClip(width)
        x = torch.randn(3, width)
        plain = model(x)
        live = apply_lora(model, lora, "1")
        assert list(live.layers) == [prefix + "text_model_encoder_layers_0_self_attn_q_proj"]
        delta = lora.modules[prefix + "text_model_encoder_layers_0_self_attn_q_proj"].delta()
        torch.testing.assert_close(model(x), plain + x @ delta.T, rtol=1e-4, atol=1e-5)
    with pytest.raises(LoraMergeError, match=r"changes a \(768, 768\) weight, but layer .*q_proj has \(320, 320\)"):
        apply_lora(TinyClip(320), lora, "1")


def test_a_removed_lora_cannot_be_changed_any_more(joined):
    _, _, j = joined
    model = TinyUNet()
    live = apply_lora(model, api.load(j), "1,0")
    live.remove()
    with pytest.raises(LoraMergeError, match="no LoRA was applied"):
        set_lora_diag(model, "0")
    with pytest.raises(LoraMergeError, match="was removed"):
        set_lora_diag(live, "0")


def test_apply_lora_refuses_a_model_none_of_whose_layers_match(joined):
    """Layer names of another convention would otherwise apply nothing without a word; a model that
    holds some of the layers (the UNet without the text encoder) is fine."""
    _, _, j = joined
    lora = api.load(j)
    other = torch.nn.Sequential(torch.nn.Linear(320, 320))
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(LoraMergeError, match="no layer of the model matches a module of the LoRA"):
        apply_lora(other, lora, "1")
    assert not other._forward_hooks and not other[0]._forward_hooks
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
    live = apply_lora(TinyUNet(), lora, "1")
    assert live.layers and live.unmatched


def test_a_join_of_a_join_keeps_every_part_pickable(tmp_path):
    """J = a + b, where b has modules a lacks; K = J + c.  K's layout lists a, b and c, so Σ on K
    picks each part exactly, per component or per rank, through the streamed and the in-memory concat."""
    from delta_oracle import dense_deltas
    from lora_merge_ext.layout import layout_of
    a = make_lora(tmp_path / "a.safetensors", rank=4, alpha=2.0, seed=1,
                  keep=lambda n: "down_blocks_0_attentions_0" in n and "attn2_to_k" in n)
    b = make_lora(tmp_path / "b.safetensors", rank=8, seed=2, keep=lambda n: "attn2_to_k" in n)
    c = make_lora(tmp_path / "c.safetensors", rank=2, seed=3, keep=lambda n: "attn2_to_k" in n or "attn1_to_q" in n)
    j, _ = api.merge_to_file([a, b], tmp_path / "J.safetensors")
    da, db, dc = dense_deltas(a), dense_deltas(b), dense_deltas(c)
    for k_path in (api.merge_to_file([j.path, c], tmp_path / "K.safetensors", weights=[0.5, 1])[0].path,
                   api.save(api.merge([j.path, c], weights=[0.5, 1]).lora, tmp_path / "K2.safetensors").path):
        k = api.load(k_path)
        layout = layout_of(k)
        assert [(comp.name, comp.rank) for comp in layout.components] == [("a", 4), ("b", 8), ("c", 2)]
        for sigma, (wa, wb, wc) in {"1,0,0": (0.5, 0, 0), "0*4,1*8,0*2": (0, 0.5, 0), "c=1": (0, 0, 1),
                                    "1,-1,2": (0.5, -0.5, 2), "1*4,0*10": (0.5, 0, 0)}.items():
            got = dense_deltas(api.save(api.realize(k, sigma), tmp_path / "r.safetensors", overwrite=True).path)
            for name in set(da) | set(db) | set(dc):
                expected = wa * da.get(name, 0) + wb * db.get(name, 0) + wc * dc.get(name, 0)
                if isinstance(expected, int):
                    assert name not in got
                    continue
                torch.testing.assert_close(got.get(name, torch.zeros_like(expected)), expected,
                                           rtol=1e-5, atol=1e-6)
    twice = layout_of(api.merge([j.path, j.path, a]).lora)  # names kept apart
    assert [comp.name for comp in twice.components] == ["a", "b", "a_2", "b_2", "a_3"]


def test_a_model_carrying_a_lora_can_be_deep_copied_and_saved_whole(joined, tmp_path):
    """The copy gets its own LoRA (Σ changes on one leave the other alone); torch.save of the whole
    model works and the loaded model still takes Σ changes."""
    import copy
    _, _, j = joined
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    plain = model(x, img)
    apply_lora(model, api.load(j), "1,0")
    with_lora = model(x, img)
    twin = copy.deepcopy(model)
    set_lora_diag(twin, "0")
    assert torch.equal(twin(x, img)[0], plain[0])             # the copy's own Σ
    assert torch.equal(model(x, img)[0], with_lora[0])        # the original keeps its Σ
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(x, img)[0], with_lora[0])
    set_lora_diag(loaded, "0")
    assert torch.equal(loaded(x, img)[0], plain[0]) and torch.equal(model(x, img)[0], with_lora[0])


def test_a_lora_pickles_at_about_its_size(joined):
    """Factors are views on one buffer the size of the file; a pickle holds each factor's own bytes,
    not the whole buffer once per view (a multiprocessing pool pickles what it is given)."""
    import os
    import pickle
    a, b, j = joined
    lora = api.load(j)
    size = os.path.getsize(j)
    restored = pickle.loads(pickle.dumps(lora))
    assert len(pickle.dumps(lora)) < 1.5 * size
    assert all(torch.equal(restored.modules[n].delta(), m.delta()) for n, m in lora.modules.items())
    assert restored.file_hash() == lora.file_hash()
    merged = api.merge([a, b]).lora
    assert len(pickle.dumps(merged)) < 1.5 * (os.path.getsize(a) + os.path.getsize(b)) * 2  # fp32 output


def test_apply_lora_takes_a_path_or_a_merge_result_and_checks_its_multipliers(joined):
    a, b, j = joined
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    apply_lora(model, api.load(j), "1,0", te=0.5, unet=0.25)
    want = model(x, img)
    for source in (j, str(j), api.merge([a, b])):
        apply_lora(model, source, "1,0", te=0.5, unet=0.25)
        assert torch.allclose(model(x, img)[0], want[0], atol=1e-6), type(source)
    import numpy as np
    apply_lora(model, j, "1,0", te=np.float32(0.5), unet=torch.tensor(0.25))
    assert torch.allclose(model(x, img)[0], want[0], atol=1e-6)
    for bad, message in ((float("nan"), "unet multiplier nan is not finite"),
                         ("0.5", "unet multiplier '0.5' is not a number"),
                         (None, "unet multiplier None is not a number")):
        with pytest.raises(LoraMergeError, match=message):
            apply_lora(model, j, "0,1", unet=bad)
    assert torch.allclose(model(x, img)[0], want[0], atol=1e-6)   # the LoRA applied before is kept
    with pytest.raises(LoraMergeError, match="is not a torch.nn.Module"):
        apply_lora(None, j)
    with pytest.raises(LoraMergeError, match="expected a file path, a LoraFile"):
        apply_lora(model, 42)


def test_custom_presets_are_a_path_or_a_mapping_everywhere(joined, tmp_path):
    """presets= takes a preset file's path or a mapping, in realize, merge and apply_lora alike."""
    a, b, j = joined
    mine = "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"
    (tmp_path / "my.txt").write_text(f"MINE:{mine}\n")
    want = api.realize(j, "1", lbw=mine)
    for presets in (tmp_path / "my.txt", str(tmp_path / "my.txt"), {"MINE": mine}, {"MINE": [mine]}):
        got = api.realize(j, "1", lbw="MINE", presets=presets)
        assert all(torch.equal(got.modules[n].delta(), m.delta()) for n, m in want.modules.items()), presets
    merged = api.merge([a, b], lbw="MINE", presets={"MINE": mine})
    assert all(torch.allclose(merged.lora.modules[n].delta(), m.delta(), atol=1e-6)
               for n, m in api.merge([a, b], lbw=mine).lora.modules.items())
    model = TinyUNet()
    x, img = torch.randn(5, 320), torch.randn(1, 640, 8, 8)
    apply_lora(model, j, "1", lbw=mine)
    numbers = model(x, img)
    apply_lora(model, j, "1", lbw="MINE", presets={"MINE": mine})
    assert torch.equal(model(x, img)[0], numbers[0]) and torch.equal(model(x, img)[1], numbers[1])
    for bad, message in ((42, "expected a preset file's path or a mapping"),
                         ({"MINE": 1}, "expected a name and a string"), ({"MINE": "1,2,3"}, "has 3 values"),
                         ({"MINE": [mine, "0," * 25 + "0"]}, "two SD1/SD2 forms; give at most one per family")):
        with pytest.raises(LoraMergeError, match=message):
            api.realize(j, "1", lbw="MINE", presets=bad)


def test_script_mistakes_get_one_line_errors_or_just_work(joined, tmp_path):
    """What a script author plausibly writes: a merge result where a LoraFile is expected, one path
    for the inputs of a resize, a torch.device, an lbw that is not text."""
    a, b, j = joined
    result = api.merge([a, b])
    saved = api.save(result, tmp_path / "from_result.safetensors")          # the result, not .lora
    assert api.load(saved.path).modules.keys() == result.lora.modules.keys()
    assert api.load(result.lora) is result.lora
    assert api.realize(result, "1,0").modules.keys() == api.realize(result.lora, "1,0").modules.keys()
    resized = api.merge(str(a), mode="svd", rank=2)                          # one input: an svd resize
    assert {m.rank for m in resized.lora.modules.values()} == {2}
    api.merge_to_file(a, tmp_path / "resized.safetensors", mode="svd", rank=2)
    again = api.merge([result, b])                                           # a result as an input
    assert len(again.lora.modules) == len(result.lora.modules)
    on_cpu = api.merge([a, b], device=torch.device("cpu"))
    assert all(torch.equal(on_cpu.lora.modules[n].up, m.up) for n, m in result.lora.modules.items())
    with pytest.raises(LoraMergeError, match="lbw 1 for input 1 is not text"):
        api.merge([a, b], lbw=[1, None])
    with pytest.raises(LoraMergeError, match="expected a file path, a LoraFile"):
        api.load(None)
    with pytest.raises(LoraMergeError, match="is not a LoraFile or a merge's result"):
        api.save(str(a), tmp_path / "x.safetensors")
    with pytest.raises(LoraMergeError, match="device 5 is not cpu or cuda"):
        api.merge([a, b], device=5)
