"""The up factor of one LoRA module with per-rank multipliers folded in: up·diag(c).

Used by the WebUI runtime to hand Σ (and lbw, and the module's alpha/rank scale) to the host's own
LoRA code as ordinary factors: ΔW = (up·diag(c))·down.
"""
from __future__ import annotations

import torch

from .lora_file import LoraModule


def scaled_up(module: LoraModule, coefficients: torch.Tensor) -> torch.Tensor | None:
    """up·diag(c) for c = `coefficients` (one per rank), in up's shape; None when every c is 0."""
    c = coefficients.to(torch.float32).flatten()
    if c.numel() != module.rank:
        raise ValueError(f"{module.name}: {c.numel()} multipliers for rank {module.rank}")
    if not bool(torch.any(c != 0)):
        return None
    return module.up * c.reshape((1, -1) + (1,) * (module.up.dim() - 2))
