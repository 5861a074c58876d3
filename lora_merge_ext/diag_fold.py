"""Factors of one LoRA module with per-rank multipliers folded in: up·diag(c)·down as (down, up).

Used by the WebUI runtime to hand Σ (and lbw, and the module's alpha/rank scale) to the host's own
LoRA code as ordinary factors; ranks whose multiplier is 0 are dropped.
"""
from __future__ import annotations

import torch

from .lora_file import LoraModule


def fold_into_up(module: LoraModule, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(down, up) with up·down = module.up·diag(c)·module.down, c = `coefficients` (one per rank).

    Ranks with c = 0 are left out; None when every c is 0.  down keeps its shape class
    ((r, in) or (r, in, kh, kw)), up stays (out, r) or (out, r, 1, 1).
    """
    c = coefficients.to(torch.float32).flatten()
    if c.numel() != module.rank:
        raise ValueError(f"{module.name}: {c.numel()} multipliers for rank {module.rank}")
    keep = torch.nonzero(c).flatten()
    if keep.numel() == 0:
        return None
    up, down = module.up, module.down
    if keep.numel() != c.numel():
        c, up, down = c[keep], up[:, keep], down[keep]
    shape = (1, -1) + (1,) * (up.dim() - 2)
    return down.contiguous(), (up * c.reshape(shape)).contiguous()
