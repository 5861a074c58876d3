"""Key names: kohya and PEFT/diffusers keys split into (module, role), SDXL diffusers names → SGM names."""
import pytest

from lora_merge_ext.key_names import is_sgm_name, sdxl_unet_to_sgm, split_key, unsupported_type
from lora_merge_ext.lbw_blocks import block_of

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
