"""Which model layer a LoRA module patches, found the way the Lora extension's ``load_network`` finds
it: the host's ``convert_diffusers_name_to_compvis``, then the parent MultiheadAttention of a
``_q/_k/_v_proj`` key, then the SDXL fall-backs (``lora_unet`` → ``diffusion_model``,
``lora_te1_text_model`` → ``0_transformer_text_model`` or ``transformer_text_model``)."""
from __future__ import annotations

import re

_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def match_layer(networks, mapping: dict, module_name: str, is_sd2: bool):
    """(sd_key, torch module) for a kohya module name, or None when the model has no such layer."""
    key = networks.convert_diffusers_name_to_compvis(module_name, is_sd2)
    layer = mapping.get(key)
    if layer is None:
        m = _X_PROJ.match(key)
        if m:
            layer = mapping.get(m.group(1))
    if layer is None and "lora_unet" in module_name:
        key = module_name.replace("lora_unet", "diffusion_model")
        layer = mapping.get(key)
    elif layer is None and "lora_te1_text_model" in module_name:
        key = module_name.replace("lora_te1_text_model", "0_transformer_text_model")
        layer = mapping.get(key)
        if layer is None:
            key = module_name.replace("lora_te1_text_model", "transformer_text_model")
            layer = mapping.get(key)
    return None if layer is None else (key, layer)


def layer_mapping(networks, sd_model) -> dict:
    """The model's layer-name mapping (built by the Lora extension; rebuilt if missing, as the host does)."""
    mapping = getattr(sd_model, "network_layer_mapping", None)
    if mapping is None:
        networks.assign_network_names_to_compvis_modules(sd_model)
        mapping = sd_model.network_layer_mapping
    return mapping
