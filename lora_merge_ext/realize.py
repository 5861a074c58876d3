"""Bake Σ (and lbw, te/unet multipliers) into a plain LoRA: ΔW_m = f(m)·s·U·diag(v_m)·D."""
from __future__ import annotations

import torch

from .layout import JoinLayout
from .lbw import lbw_factor
from .lora_file import LoraFile, LoraModule


def is_text_encoder(module: str) -> bool:
    return module.startswith(("lora_te_", "lora_te1_", "lora_te2_"))


def module_coefficients(module: LoraModule, layout: JoinLayout, per_rank: list[float], block_weights,
                        te: float = 1.0, unet: float = 1.0) -> torch.Tensor:
    """Per-rank multipliers of one module: Σ entries × lbw block factor × te/unet multiplier × scale."""
    factor = lbw_factor(block_weights, module.name) * (te if is_text_encoder(module.name) else unet)
    v = torch.tensor(layout.module_vector(module.name, per_rank), dtype=torch.float32)
    return v * (factor * module.scale)


def realize_lora(lora: LoraFile, layout: JoinLayout, per_rank: list[float], block_weights=None,
                 te: float = 1.0, unet: float = 1.0) -> LoraFile:
    """A plain LoRA whose ΔW equals what `<ljl:…>` applies; ranks with a zero multiplier are dropped."""
    modules = {}
    for name, module in lora.modules.items():
        coef = module_coefficients(module, layout, per_rank, block_weights, te, unet)
        keep = torch.nonzero(coef).flatten()
        if len(keep) == 0:
            continue
        c = coef[keep]
        root = c.abs().sqrt()
        up = module.up.float()[:, keep] * (root * c.sign()).reshape(1, -1, *([1] * (module.up.dim() - 2)))
        down = module.down.float()[keep] * root.reshape(-1, *([1] * (module.down.dim() - 1)))
        modules[name] = LoraModule(name, down.contiguous(), up.contiguous(), float(len(keep)))
    return LoraFile(modules=modules, metadata={}, family=lora.family, embeddings=dict(lora.embeddings))

