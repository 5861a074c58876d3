"""Which model family (sd1, sd2, sdxl) a LoRA was trained for, from shapes, keys and metadata."""
from __future__ import annotations

import re

import torch

FAMILIES = ("sd1", "sd2", "sdxl")
CROSS_ATTENTION_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_ENCODER_WIDTH = {768: "sd1", 1024: "sd2"}
LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
# UNet parts only SDXL has, in diffusers names: more than one transformer block per attention, and
# attention in the first up block (SD1/SD2: one block each; their first up block has none)
SDXL_ONLY_UNET = re.compile(r"^lora_unet_(?:\w*_transformer_blocks_[1-9]|up_blocks_0_attentions_)")


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if metadata.get("ss_v2") == "True" or version.startswith("sd_v2"):
        return "sd2"
    if version.startswith("sd_v1") or metadata.get("ss_v2") == "False":
        return "sd1"
    return None


def detect_family(downs: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Family from the down factors (module → tensor) first, then UNet parts only SDXL has, then
    metadata, then SGM names; a file whose only text encoder is named lora_te1_ is SDXL unless its
    metadata says otherwise."""
    for module, down in downs.items():
        if module.endswith(("attn2_to_k", "attn2_to_v")):
            found = CROSS_ATTENTION_WIDTH.get(int(down.shape[1]))
            if found:
                return found
    if any(m.startswith("lora_te2_") for m in downs):
        return "sdxl"
    for module, down in downs.items():
        if module.startswith(("lora_te_", "lora_te1_")) and module.endswith("self_attn_q_proj"):
            found = TEXT_ENCODER_WIDTH.get(int(down.shape[1]))
            if found == "sd2" or (found and module.startswith("lora_te_")):
                return found
    if any(m.startswith("lora_te1_") for m in downs):
        # SDXL's first text encoder, or an SD1 one under that name (the WebUI reads those too):
        # 768 wide either way, so the metadata decides
        return family_from_metadata(metadata) or "sdxl"
    if any(SDXL_ONLY_UNET.match(m) for m in downs):
        return "sdxl"
    from_meta = family_from_metadata(metadata)
    if from_meta:
        return from_meta
    if any(m.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_")) for m in downs):
        return "sdxl"
    return "sd1"
