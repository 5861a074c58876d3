"""Key names: split file keys into (module, suffix) and normalise PEFT/diffusers forms to kohya names.

SD1/SD2 kohya UNet names are diffusers-style; SDXL kohya UNet names are SGM-style, so an SDXL file
with diffusers-style UNet names is mapped to the SGM names kohya writes.
"""
from __future__ import annotations

import re

# suffix in the file → role in LoraModule
KOHYA_SUFFIXES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha",
    "lora_A.weight": "down", "lora_B.weight": "up",
}
PEFT_SUFFIXES = {
    "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up", "alpha": "alpha",
}
PEFT_PREFIXES = {"unet.": "lora_unet_", "text_encoder_2.": "lora_te2_", "text_encoder.": "lora_te_"}
# a model's own state-dict paths, as `get_peft_model_state_dict(unet)` or (text encoder) writes them
BARE_ROOTS = {**{root: "lora_unet_" for root in ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.",
                                                "time_embedding.", "add_embedding.")},
              "text_model.": "lora_te_"}
_ADAPTER_NAME = re.compile(r"\.lora_([AB])\.[^.]+\.weight$")  # PEFT's lora_A.<adapter>.weight
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")  # diffusers < 0.21

# key segments of LoRA types this tool does not merge, named for the error message
UNSUPPORTED_TYPES = {
    "hada_w1_a": "LoHa", "hada_w1_b": "LoHa", "hada_w2_a": "LoHa", "hada_w2_b": "LoHa", "hada_t1": "LoHa",
    "lokr_w1": "LoKr", "lokr_w2": "LoKr", "lokr_w1_a": "LoKr", "lokr_w1_b": "LoKr", "lokr_w2_a": "LoKr",
    "lokr_w2_b": "LoKr", "lokr_t2": "LoKr", "on_input": "IA3", "oft_blocks": "OFT", "oft_diag": "OFT",
    "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "a1": "GLoRA", "a2": "GLoRA", "b1": "GLoRA",
    "b2": "GLoRA", "w_norm": "Norm", "b_norm": "Norm", "diff": "full (diff)", "diff_b": "full (diff)",
}

_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}
_PLAIN = {"conv_in": "input_blocks_0_0", "conv_out": "out_2", "conv_norm_out": "out_0",
          "time_embedding_linear_1": "time_embed_0", "time_embedding_linear_2": "time_embed_2",
          "add_embedding_linear_1": "label_emb_0_0", "add_embedding_linear_2": "label_emb_0_2"}


def unsupported_type(key: str) -> str | None:
    """Name of the LoRA type a key belongs to when this tool cannot merge it, else None."""
    for segment in key.split(".")[1:]:
        if segment in UNSUPPORTED_TYPES:
            return UNSUPPORTED_TYPES[segment]
    return None


def split_key(key: str) -> tuple[str, str, str] | None:
    """(module, role, form) for a LoRA tensor key, form "kohya" or "peft"; None when not a LoRA key."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    if key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
        module, _, suffix = key.partition(".")
        role = KOHYA_SUFFIXES.get(suffix)
        return (module, role, "kohya") if role else None
    key = _ADAPTER_NAME.sub(r".lora_\1.weight", key)
    key = _OLD_PROCESSOR.sub(lambda m: f".{m[1]}{'.0' if m[1] == 'to_out' else ''}.lora.{m[2]}.weight", key)
    for prefix, kohya in [*PEFT_PREFIXES.items(), *BARE_ROOTS.items()]:
        if key.startswith(prefix):
            start = len(prefix) if prefix in PEFT_PREFIXES else 0
            for suffix, role in PEFT_SUFFIXES.items():
                if key.endswith("." + suffix):
                    return kohya + key[start:-len(suffix) - 1].replace(".", "_"), role, "peft"
            return None
    return None


def sdxl_unet_to_sgm(module: str) -> str:
    """Map an SDXL diffusers-style UNet module name (lora_unet_down_blocks_…) to kohya's SGM name."""
    if not module.startswith("lora_unet_"):
        return module
    rest = module[len("lora_unet_"):]
    for plain, sgm in _PLAIN.items():
        if rest == plain or rest.startswith(plain + "_"):
            return "lora_unet_" + sgm + rest[len(plain):]
    m = re.match(r"(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        side, i, kind, j, tail = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        index = 3 * i + j + 1 if side == "down" else 3 * i + j
        block = "input_blocks" if side == "down" else "output_blocks"
        sub = 1 if kind == "attentions" else 0
        return f"lora_unet_{block}_{index}_{sub}_{_resnet_tail(tail) if kind == 'resnets' else tail}"
    m = re.match(r"mid_block_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        kind, j, tail = m.group(1), int(m.group(2)), m.group(3)
        if kind == "attentions":
            return f"lora_unet_middle_block_1_{tail}"
        return f"lora_unet_middle_block_{2 * j}_{_resnet_tail(tail)}"
    m = re.match(r"down_blocks_(\d+)_downsamplers_0_conv$", rest)
    if m:
        return f"lora_unet_input_blocks_{3 * int(m.group(1)) + 3}_0_op"
    m = re.match(r"up_blocks_(\d+)_upsamplers_0_conv$", rest)
    if m:
        i = int(m.group(1))
        return f"lora_unet_output_blocks_{3 * i + 2}_{2 if i < 2 else 1}_conv"
    return module


def _resnet_tail(tail: str) -> str:
    return _RESNET.get(tail, tail)


_RESNET_BACK = {sgm: diffusers for diffusers, sgm in _RESNET.items()}
_PLAIN_BACK = {sgm: diffusers for diffusers, sgm in _PLAIN.items() if not diffusers.startswith("add_")}


def _resnet_tail_back(tail: str) -> str:
    return _RESNET_BACK.get(tail, tail)


def sd_unet_from_sgm(module: str) -> str:
    """Map an SD1/SD2 UNet module name written in the model's own (compvis) block names
    (lora_unet_input_blocks_4_1_…) to the diffusers-style name kohya writes for these models
    (lora_unet_down_blocks_1_attentions_0_…); any other name comes back unchanged."""
    if not module.startswith("lora_unet_"):
        return module
    rest = module[len("lora_unet_"):]
    for sgm, plain in _PLAIN_BACK.items():
        if rest == sgm or rest.startswith(sgm + "_"):
            return "lora_unet_" + plain + rest[len(sgm):]
    m = re.match(r"input_blocks_(\d+)_([01])_(.+)", rest)
    if m:
        n, sub, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        if n % 3 == 0 and sub == 0 and tail == "op":
            return f"lora_unet_down_blocks_{n // 3 - 1}_downsamplers_0_conv"
        level, j = divmod(n - 1, 3)
        if sub == 1:
            return f"lora_unet_down_blocks_{level}_attentions_{j}_{tail}"
        return f"lora_unet_down_blocks_{level}_resnets_{j}_{_resnet_tail_back(tail)}"
    m = re.match(r"middle_block_([012])_(.+)", rest)
    if m:
        k, tail = int(m.group(1)), m.group(2)
        if k == 1:
            return f"lora_unet_mid_block_attentions_0_{tail}"
        return f"lora_unet_mid_block_resnets_{k // 2}_{_resnet_tail_back(tail)}"
    m = re.match(r"output_blocks_(\d+)_([012])_(.+)", rest)
    if m:
        n, sub, tail = int(m.group(1)), int(m.group(2)), m.group(3)
        level, j = divmod(n, 3)
        if sub > 0 and tail == "conv":
            return f"lora_unet_up_blocks_{level}_upsamplers_0_conv"
        if sub == 1:
            return f"lora_unet_up_blocks_{level}_attentions_{j}_{tail}"
        return f"lora_unet_up_blocks_{level}_resnets_{j}_{_resnet_tail_back(tail)}"
    return module


def is_sgm_name(module: str) -> bool:
    return module.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
