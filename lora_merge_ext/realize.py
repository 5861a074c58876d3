"""Bake Σ (and lbw, te/unet multipliers) into a plain LoRA: ΔW_m = f(m)·s·U·diag(v_m)·D."""
from __future__ import annotations

import math
import numbers

import torch

from .attention_group import kept_with_siblings
from .errors import LoraMergeError
from .layout import JoinLayout
from .lbw import lbw_factor
from .lora_file import LoraFile, LoraModule


def is_text_encoder(module: str) -> bool:
    return module.startswith(("lora_te_", "lora_te1_", "lora_te2_"))


def multiplier(value, label: str) -> float:
    """A te/unet multiplier as a float: a finite real number (a numpy scalar or a one-element tensor too)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LoraMergeError(f"{label} multiplier {repr(value)[:60]} is not a number")
    if not math.isfinite(float(value)):
        raise LoraMergeError(f"{label} multiplier {float(value)} is not finite")
    return float(value)


def module_coefficients(module: LoraModule, layout: JoinLayout, per_rank: list[float], block_weights,
                        te: float = 1.0, unet: float = 1.0) -> torch.Tensor:
    """Per-rank multipliers of one module: Σ entries × lbw block factor × te/unet multiplier × scale."""
    factor = lbw_factor(block_weights, module.name) * (te if is_text_encoder(module.name) else unet)
    v = torch.tensor(layout.module_vector(module.name, per_rank), dtype=torch.float32)
    return v * (factor * module.scale)


def realize_lora(lora: LoraFile, layout: JoinLayout, per_rank: list[float], block_weights=None,
                 te: float = 1.0, unet: float = 1.0) -> LoraFile:
    """A plain LoRA whose ΔW equals what `<ljl:…>` applies; ranks with a zero multiplier are dropped, and
    modules with none left, except an attention projection whose layer has a live one (kept as a rank-1 zero)."""
    coefs = {name: module_coefficients(module, layout, per_rank, block_weights, te, unet)
             for name, module in lora.modules.items()}
    wanted = kept_with_siblings(coefs, [name for name, coef in coefs.items() if bool(coef.any())])
    modules = {}
    for name, module in lora.modules.items():
        if name not in wanted:
            continue
        coef = coefs[name]
        keep = torch.nonzero(coef).flatten()
        if len(keep) == 0:  # a zero projection beside live ones: the WebUI needs all four (attention_group)
            modules[name] = LoraModule(name, torch.zeros_like(module.down[:1], dtype=torch.float32),
                                       torch.zeros_like(module.up[:, :1], dtype=torch.float32), 1.0)
            continue
        c = coef[keep]
        root = c.abs().sqrt()
        up = module.up.float()[:, keep] * (root * c.sign()).reshape(1, -1, *([1] * (module.up.dim() - 2)))
        down = module.down.float()[keep] * root.reshape(-1, *([1] * (module.down.dim() - 1)))
        modules[name] = LoraModule(name, down.contiguous(), up.contiguous(), float(len(keep)))
    return LoraFile(modules=modules, metadata={}, family=lora.family, embeddings=dict(lora.embeddings))

