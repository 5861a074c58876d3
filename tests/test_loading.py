"""Reading LoRA files: key forms, dtypes, Tucker, families, and refusals by name."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from delta_oracle import dense_deltas
from lora_factory import make_lora, make_tensors, to_peft, write_lora
from lora_merge_ext import api
from lora_merge_ext.errors import LoraMergeError

KEEP = lambda n: "layers_1_" in n or "attn2_to_v" in n or "down_blocks_1_resnets_0_conv2" in n or "proj_out" in n


def deltas_of(lora):
    return {n: m.delta().double() for n, m in lora.modules.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kohya_locon_in_every_dtype(tmp_path, dtype):
    path = write_lora(tmp_path / "a.safetensors", make_tensors("sd15_locon", rank=4, seed=1, keep=KEEP, dtype=dtype))
    lora = api.load(path)
    assert lora.family == "sd1"
    want = dense_deltas(path)
    got = deltas_of(lora)
    assert set(got) == set(want)
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7), n
        assert lora.modules[n].down.dtype == dtype and lora.modules[n].down2d().dtype == torch.float32


def test_missing_alpha_means_scale_one(tmp_path):
    path = write_lora(tmp_path / "a.safetensors", make_tensors("sd15_lora", rank=8, alpha=None, keep=KEEP))
    lora = api.load(path)
    assert all(m.alpha is None and m.scale == 1.0 for m in lora.modules.values())


def test_tucker_mid_is_folded_exactly(tmp_path):
    path = write_lora(tmp_path / "t.safetensors", make_tensors("sd15_locon", rank=4, tucker=True, seed=3, keep=KEEP))
    lora = api.load(path)
    conv = [n for n, m in lora.modules.items() if m.kernel == (3, 3)]
    assert conv
    want = dense_deltas(path)
    for n in conv:
        assert lora.modules[n].down.shape[2:] == (3, 3)
        assert torch.allclose(lora.modules[n].delta().double(), want[n], rtol=1e-5, atol=1e-7)


def test_peft_sd1_keys_are_kohya_modules(tmp_path):
    kohya = make_tensors("sd15_lora", rank=4, alpha=2.0, seed=4, keep=KEEP)
    k = api.load(write_lora(tmp_path / "k.safetensors", kohya))
    p = api.load(write_lora(tmp_path / "p.safetensors", to_peft(kohya, "sd1"), None))
    assert set(p.modules) == set(k.modules)
    for n in k.modules:
        assert torch.allclose(p.modules[n].delta(), k.modules[n].delta(), rtol=1e-5, atol=1e-7), n


@pytest.mark.parametrize("form", ["bare", "base_model", "adapter_name"])
def test_other_peft_key_forms_are_the_same_modules(tmp_path, form):
    """get_peft_model_state_dict(unet) writes no unet. prefix; a PeftModel's state dict adds
    base_model.model.; a named adapter writes lora_A.<adapter>.weight."""
    kohya = make_tensors("sd15_lora", rank=4, alpha=2.0, seed=4, keep=KEEP)
    k = api.load(write_lora(tmp_path / "k.safetensors", kohya))
    peft = to_peft(kohya, "sd1")
    forms = {"bare": lambda key: key.removeprefix("unet.").removeprefix("text_encoder."),
             "base_model": lambda key: "base_model.model." + key.removeprefix("unet.").removeprefix("text_encoder."),
             "adapter_name": lambda key: key.replace(".lora_A.weight", ".lora_A.default.weight")
                                            .replace(".lora_B.weight", ".lora_B.default.weight")}
    p = api.load(write_lora(tmp_path / "p.safetensors", {forms[form](key): t for key, t in peft.items()}, None))
    assert set(p.modules) == set(k.modules)
    for n in k.modules:
        assert torch.allclose(p.modules[n].delta(), k.modules[n].delta(), rtol=1e-5, atol=1e-7), n


def test_old_diffusers_attention_processor_keys(tmp_path):
    """diffusers before 0.21 saved attention LoRAs as ….attn1.processor.to_k_lora.down.weight."""
    kohya = make_tensors("sd15_lora", rank=4, alpha=None, seed=4,
                         keep=lambda n: "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_" in n)
    assert any("to_out_0" in n for n in kohya)
    old = {}
    for key, t in to_peft(kohya, "sd1").items():
        module, role = key.rsplit(".lora_", 1)
        attn, layer = module.rsplit(".attn1.", 1)
        layer = layer.removesuffix(".0")
        old[f"{attn}.attn1.processor.{layer}_lora.{'down' if role == 'A.weight' else 'up'}.weight"] = t
    p = api.load(write_lora(tmp_path / "old.safetensors", old, None))
    k = api.load(write_lora(tmp_path / "k.safetensors", kohya))
    assert set(p.modules) == set(k.modules)
    for n in k.modules:
        assert torch.allclose(p.modules[n].delta(), k.modules[n].delta(), rtol=1e-5, atol=1e-7), n


def test_sdxl_detection_and_names(tmp_path):
    keep = lambda n: "layers_0_self_attn_q" in n or "input_blocks_8_1_transformer_blocks_0_attn2" in n
    lora = api.load(write_lora(tmp_path / "x.safetensors", make_tensors("sdxl_lora", keep=keep), None))
    assert lora.family == "sdxl"
    assert any(n.startswith("lora_te2_") for n in lora.modules)


def test_sd2_from_metadata_or_shapes(tmp_path):
    t = make_tensors("sd15_lora", keep=lambda n: "attn1_to_q" in n)
    assert api.load(write_lora(tmp_path / "a.safetensors", t, None, {"ss_v2": "True"})).family == "sd2"
    t = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(2, 1024),
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(320, 2)}
    assert api.load(write_lora(tmp_path / "b.safetensors", t, None)).family == "sd2"


@pytest.mark.parametrize("suffix, kind", [
    ("hada_w1_a", "LoHa"), ("lokr_w1", "LoKr"), ("on_input", "IA3"), ("oft_blocks", "OFT"),
    ("dora_scale", "DoRA"), ("diff", "full"),
])
def test_unmergeable_types_are_refused_by_name(tmp_path, suffix, kind):
    t = make_tensors("sd15_lora", keep=lambda n: "attn1_to_q" in n)
    t[f"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k.{suffix}"] = torch.zeros(4, 4)
    path = write_lora(tmp_path / "x.safetensors", t)
    with pytest.raises(LoraMergeError, match=kind):
        api.load(path)


def test_checkpoint_is_not_a_lora(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(LoraMergeError, match="checkpoint, not a LoRA"):
        api.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda t, n: t.__setitem__(f"{n}.lora_up.weight", torch.zeros(320, 3)), "does not fit"),
    (lambda t, n: t.__delitem__(f"{n}.lora_up.weight"), "no up weight"),
    (lambda t, n: t.__setitem__(f"{n}.alpha", torch.ones(2)), "scalar"),
    (lambda t, n: t[f"{n}.lora_down.weight"].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    (lambda t, n: t.__setitem__(f"{n}.lora_up.weight", torch.full((320, 4), float("inf"))), "NaN or Inf"),
])
def test_broken_modules_are_refused_with_the_module_named(tmp_path, edit, message):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t = make_tensors("sd15_lora", keep=lambda n: "attn1_to_q" in n)
    edit(t, name)
    path = write_lora(tmp_path / "x.safetensors", t)
    with pytest.raises(LoraMergeError, match=message) as info:
        api.load(path)
    assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_nan_is_found_and_large_finite_values_are_not(tmp_path, dtype):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    t = {k: v.to(dtype) if v.dim() else v for k, v in make_tensors("sd15_lora", keep=lambda n: "attn1_to_q" in n).items()}
    t[f"{name}.lora_up.weight"] = torch.full((320, 4), 60000.0, dtype=dtype)  # its sum overflows fp16
    lora = api.load(write_lora(tmp_path / "big.safetensors", t))
    assert lora.modules[name].up.dtype == dtype
    t[f"{name}.lora_down.weight"][1, 7] = float("nan")
    with pytest.raises(LoraMergeError, match="NaN or Inf") as info:
        api.load(write_lora(tmp_path / "nan.safetensors", t))
    assert name in str(info.value) and "down_blocks_1" not in str(info.value)


def test_file_hash_is_the_addnet_hash_of_the_bytes_read(tmp_path):
    from lora_merge_ext.safetensors_io import a1111_hash
    path = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=2, keep=lambda n: "attn1_to_q" in n)
    lora = api.load(path)
    assert lora.file_hash() == a1111_hash(path)
    pt = tmp_path / "a.pt"
    torch.save(load_file(path), pt)
    assert api.load(pt).file_hash() == a1111_hash(pt)


def _te1_named(tensors: dict) -> dict:
    return {k.replace("lora_te_", "lora_te1_"): v for k, v in tensors.items()}


def test_sd1_text_encoder_under_lora_te1_names_merges_module_by_module_with_lora_te_names(tmp_path):
    """The WebUI reads an SD1 file's lora_te1_ keys as the lora_te_ layers (v1.10.1 networks.py:217-223):
    both forms must be one module, or a merge would write each layer twice and the host keep one."""
    keep = lambda n: "layers_0_self_attn" in n or "attn2_to_k" in n  # noqa: E731
    plain = make_tensors("sd15_lora", rank=2, seed=1, keep=keep)
    renamed = write_lora(tmp_path / "te1.safetensors", _te1_named(make_tensors("sd15_lora", rank=3, seed=2, keep=keep)),
                         "sd1")
    lora = api.load(renamed)
    assert lora.family == "sd1" and not any(n.startswith("lora_te1_") for n in lora.modules)
    a = write_lora(tmp_path / "a.safetensors", plain, "sd1")
    merged = api.merge([a, renamed], mode="concat").lora
    assert set(merged.modules) == set(api.load(a).modules)
    want_a, want_b = dense_deltas(a), dense_deltas(renamed)
    for name, module in merged.modules.items():
        want = want_a[name].double() + want_b[name.replace("lora_te_", "lora_te1_")].double()
        assert torch.allclose(module.delta().double(), want, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("metadata, family", [({"ss_base_model_version": "sd_v1"}, "sd1"),
                                              ({"ss_v2": "False"}, "sd1"), ({}, "sdxl"),
                                              ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl")])
def test_a_text_encoder_only_file_under_lora_te1_names_follows_its_metadata(tmp_path, metadata, family):
    only_te = _te1_named(make_tensors("sd15_lora", rank=2, seed=3, keep=lambda n: "layers_0_self_attn" in n))
    path = write_lora(tmp_path / "t.safetensors", only_te, None, metadata)
    lora = api.load(path)
    assert lora.family == family
    prefix = "lora_te1_" if family == "sdxl" else "lora_te_"
    assert lora.modules and all(n.startswith(prefix) for n in lora.modules)


@pytest.mark.parametrize("key, reason", [
    ("diffusion_model.input_blocks.4.1.proj_in.lora_down.weight", "its module name is in no form this tool reads"),
    ("lora_unet_mid_block_attentions_0_proj_in.weight", "expected .lora_down/.lora_up/.alpha"),
])
def test_a_key_that_is_not_read_says_whether_its_ending_or_its_name_is_the_problem(tmp_path, key, reason):
    t = make_tensors("sd15_lora", keep=lambda n: "attn1_to_q" in n)
    t[key] = torch.zeros(2, 320)
    with pytest.raises(LoraMergeError, match="is not a LoRA key") as exc:
        api.load(write_lora(tmp_path / "x.safetensors", t))
    assert reason in str(exc.value) and key in str(exc.value)
