"""A text-encoder attention layer that is a torch MultiheadAttention (SDXL's second encoder) changes
in the WebUI only when the LoRA has its q, k, v and out modules.  When Σ switches off every rank of one
of them (here out_proj, rank 1 as resize tools leave it) but not of the others, `<ljl>` and the bake
must still apply q/k/v."""
import torch
from safetensors.torch import load_file

from delta_oracle import raw_modules
from host_double.fixtures import host_factory, write_lora  # noqa: F401
from lora_merge_ext import api

TE2 = "lora_te2_text_model_encoder_layers_0_self_attn_"
LAYER = "1_model_transformer_resblocks_0_attn"
SIGMA = [0.0, 1.0, 1.0, 1.0]  # per rank: the out projection (rank 1) gets nothing


def _lora(root):
    root.mkdir(parents=True, exist_ok=True)
    return write_lora(root, "A", "sdxl", rank=lambda n: 1 if n == TE2 + "out_proj" else 4, seed=1)


def _expected_qkv(path) -> torch.Tensor:
    raw = raw_modules(path)
    parts = []
    for proj in ("q", "k", "v"):
        w = raw[f"{TE2}{proj}_proj"]
        scale = float(w["alpha"]) / w["lora_down.weight"].shape[0]
        v = torch.tensor(SIGMA, dtype=torch.float64)
        parts.append(scale * (w["lora_up.weight"] * v) @ w["lora_down.weight"])
    return torch.cat(parts).float()


def _applied(host):
    layer = host.sd_model.network_layer_mapping[LAYER]
    backup = layer.network_weights_backup
    return layer.in_proj_weight - backup[0], layer.out_proj.weight - backup[1]


def test_ljl_applies_q_k_v_when_sigma_zeroes_the_out_projection(host_factory, tmp_path):
    a = _lora(tmp_path / "Lora")
    host = host_factory("sdxl", lora_dir=a.parent)
    host.txt2img("x <ljl:A:0,1,1,1>", seed=1)
    in_proj, out_proj = _applied(host)
    expected = _expected_qkv(a)
    assert float(expected.abs().max()) > 1e-2
    torch.testing.assert_close(in_proj, expected, rtol=1e-4, atol=1e-5)
    assert float(out_proj.abs().max()) == 0.0


def test_the_bake_keeps_a_zero_out_projection_so_the_webui_applies_the_rest(host_factory, tmp_path):
    a = _lora(tmp_path / "Lora")
    baked = a.parent / "baked.safetensors"
    api.save(api.realize(str(a), "0,1,1,1"), baked, dtype="fp16")
    stored = load_file(str(baked))
    assert not stored[TE2 + "out_proj.lora_up.weight"].any() and stored[TE2 + "out_proj.lora_down.weight"].shape[0] == 1
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc2.lora_up.weight" in stored  # other modules as before
    host = host_factory("sdxl", lora_dir=a.parent)
    host.txt2img("x <lora:baked:1>", seed=1)
    in_proj, out_proj = _applied(host)
    torch.testing.assert_close(in_proj, _expected_qkv(a), rtol=1e-3, atol=1e-4)  # saved as fp16
    assert float(out_proj.abs().max()) == 0.0


def test_a_module_zero_everywhere_else_is_still_left_out(tmp_path):
    a = _lora(tmp_path / "Lora")
    baked = a.parent / "none.safetensors"
    api.save(api.realize(str(a), "1", lbw="0,1,1,1,1,1,1,1,1,1,1,1"), baked)  # BASE 0: no text encoder
    assert not [k for k in load_file(str(baked)) if k.startswith("lora_te")]
