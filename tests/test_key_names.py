"""Key names: kohya and PEFT/diffusers keys split into (module, role), SDXL diffusers names → SGM names."""
import json
from pathlib import Path

import pytest

from lora_merge_ext.key_names import is_sgm_name, sdxl_unet_to_sgm, split_key, unsupported_type
from lora_merge_ext.lbw_blocks import block_of
from lora_merge_ext.loading import kohya_name

SPECS = Path(__file__).resolve().parent / "data" / "module_specs"

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.mark.parametrize("key, expected", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
     ("lora_unet_down_blocks_0_attentions_0_proj_in", "down", "kohya")),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha", ("lora_te2_text_model_encoder_layers_0_mlp_fc1", "alpha", "kohya")),
    ("lora_unet_conv_in.lora_mid.weight", ("lora_unet_conv_in", "mid", "kohya")),
    (f"unet.{ATTN}.to_q.lora_A.weight", ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "down", "peft")),
    (f"unet.{ATTN}.to_out.0.lora.up.weight",
     ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0", "up", "peft")),
    (f"unet.{ATTN}.to_k.lora_linear_layer.down.weight",
     ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k", "down", "peft")),
    ("text_encoder.text_model.encoder.layers.3.self_attn.q_proj.lora_B.weight",
     ("lora_te_text_model_encoder_layers_3_self_attn_q_proj", "up", "peft")),
    ("text_encoder_2.text_model.encoder.layers.3.mlp.fc2.lora_A.weight",
     ("lora_te2_text_model_encoder_layers_3_mlp_fc2", "down", "peft")),
    (f"base_model.model.unet.{ATTN}.to_v.lora_B.weight",
     ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v", "up", "peft")),
])
def test_split_key(key, expected):
    assert split_key(key) == expected


@pytest.mark.parametrize("key", [
    "lora_unet_x.hada_w1_a",  # a LoHa tensor: not a LoRA role
    "lora_unet_x.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    f"unet.{ATTN}.to_q.weight",
    "bundle_emb.x.string_to_param.*",
])
def test_keys_that_are_not_lora_tensors(key):
    assert split_key(key) is None


def test_unsupported_types_are_named():
    assert unsupported_type("lora_unet_x.hada_w1_a") == "LoHa"
    assert unsupported_type("lora_unet_x.lokr_w2") == "LoKr"
    assert unsupported_type("lora_unet_x.dora_scale") == "DoRA"
    assert unsupported_type("lora_unet_x.lora_down.weight") is None


# LORA_BLOCK_WEIGHT.md §2b: A1111's diffusers → compvis arithmetic, applied to SDXL (3 down, 3 up blocks)
@pytest.mark.parametrize("diffusers, sgm", [
    ("lora_unet_down_blocks_1_attentions_0_proj_in", "lora_unet_input_blocks_4_1_proj_in"),
    ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k",
     "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k"),
    ("lora_unet_down_blocks_0_resnets_1_conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
    ("lora_unet_down_blocks_1_resnets_0_conv_shortcut", "lora_unet_input_blocks_4_0_skip_connection"),
    ("lora_unet_down_blocks_0_resnets_0_time_emb_proj", "lora_unet_input_blocks_1_0_emb_layers_1"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_input_blocks_3_0_op"),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", "lora_unet_input_blocks_6_0_op"),
    ("lora_unet_mid_block_attentions_0_proj_out", "lora_unet_middle_block_1_proj_out"),
    ("lora_unet_mid_block_resnets_1_conv2", "lora_unet_middle_block_2_out_layers_3"),
    ("lora_unet_up_blocks_0_attentions_2_proj_out", "lora_unet_output_blocks_2_1_proj_out"),
    ("lora_unet_up_blocks_1_resnets_1_conv1", "lora_unet_output_blocks_4_0_in_layers_2"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_output_blocks_2_2_conv"),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", "lora_unet_output_blocks_5_2_conv"),
    ("lora_unet_conv_in", "lora_unet_input_blocks_0_0"),
    ("lora_unet_conv_out", "lora_unet_out_2"),
    ("lora_unet_time_embedding_linear_2", "lora_unet_time_embed_2"),
    ("lora_unet_add_embedding_linear_1", "lora_unet_label_emb_0_0"),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_te1_text_model_encoder_layers_0_mlp_fc1"),
])
def test_sdxl_diffusers_names_become_sgm_names_in_the_same_block(diffusers, sgm):
    assert sdxl_unet_to_sgm(diffusers) == sgm
    assert block_of(sgm) == block_of(diffusers)  # the lbw block does not depend on the naming
    assert is_sgm_name(sgm) == sgm.startswith(("lora_unet_input", "lora_unet_middle", "lora_unet_output"))


# --- SD1 files written in the model's own block names ------------------------------------------

def _compvis(name: str) -> str:
    """The SD1 module name in the model's block names, by the host double's own mapping (written from
    the WebUI's conversion, reference §2.4)."""
    from host_double.fake_model import _sd1_unet_path
    return "lora_unet_" + _sd1_unet_path(name[len("lora_unet_"):])


def test_every_sd1_unet_module_in_compvis_names_reads_as_kohya_writes_it():
    rows = json.loads((SPECS / "sd15_locon.json").read_text())
    unet = [r[0] for r in rows if r[0].startswith("lora_unet_")]
    assert len(unet) > 250
    for name in unet:
        assert kohya_name(_compvis(name), "sd1") == name
        assert kohya_name(name, "sd1") == name
    assert kohya_name("lora_unet_time_embed_0", "sd1") == "lora_unet_time_embedding_linear_1"
    assert kohya_name("lora_unet_out_2", "sd2") == "lora_unet_conv_out"
    te_name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    assert kohya_name(te_name, "sd1") == te_name


def test_an_sd1_file_in_compvis_names_merges_module_by_module_with_a_kohya_one(tmp_path):
    from safetensors.torch import load_file, save_file

    from lora_factory import make_lora
    from lora_merge_ext import api
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=2, seed=3,
                  keep=lambda n: "down_blocks_1" in n or "up_blocks_0" in n or "mid_block" in n or "layers_0_" in n)
    renamed = {(_compvis(k.partition(".")[0]) + "." + k.partition(".")[2]) if k.startswith("lora_unet_") else k: t
               for k, t in load_file(str(a)).items()}
    b = tmp_path / "b.safetensors"
    save_file(renamed, str(b))
    result = api.merge([a, b], weights=[1, -1])
    assert set(result.lora.modules) == set(api.load(a).modules) and len(result.lora.modules) > 30
    for module in result.lora.modules.values():
        assert float(module.delta().abs().max()) < 1e-6  # the same layer, so the two cancel
    streamed, _ = api.merge_to_file([a, b], tmp_path / "c.safetensors", weights=[1, -1])  # the streamed concat
    written = api.load(streamed.path)
    assert set(written.modules) == set(result.lora.modules)
    assert all(float(m.delta().abs().max()) < 1e-6 for m in written.modules.values())
