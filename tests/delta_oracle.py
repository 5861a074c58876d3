"""Independent ΔW computation for tests: straight from the raw file tensors, dense, in float64.

Written without the package's code: safetensors' own loader, A1111's formulas (scale alpha/rank or 1,
Tucker einsum 'n m k l, i n, m j -> i j k l'), and a hand-written SD1 17-block / SDXL 12-block table.
"""
from __future__ import annotations

import re

import torch
from safetensors.torch import load_file


def raw_modules(path) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(path)).items():
        name, _, suffix = key.partition(".")
        groups.setdefault(name, {})[suffix] = t.double()
    return groups


def dense_delta(w: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔW of one module in the layer's weight shape."""
    down, up = w["lora_down.weight"], w["lora_up.weight"]
    rank = down.shape[0]
    scale = float(w["alpha"]) / rank if "alpha" in w else 1.0
    up2 = up.reshape(up.shape[0], rank)
    if "lora_mid.weight" in w:
        delta = torch.einsum("nmkl,in,mj->ijkl", w["lora_mid.weight"], up2, down.reshape(rank, -1))
    elif down.dim() == 4:
        delta = torch.einsum("or,rikl->oikl", up2, down)
    else:
        delta = up2 @ down
    return scale * delta


def dense_deltas(path) -> dict[str, torch.Tensor]:
    return {name: dense_delta(w) for name, w in raw_modules(path).items()}


SD1_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
          "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
SDXL_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"]


def block_17(name: str) -> str | None:
    """Block of an SD1 module (diffusers-style kohya name), by hand from the lbw tables."""
    if name.startswith("lora_te"):
        return "BASE"
    m = re.match(r"lora_unet_down_blocks_(\d)_(attentions|resnets)_(\d)_", name)
    if m:
        return f"IN{3 * int(m.group(1)) + int(m.group(3)) + 1:02d}"
    m = re.match(r"lora_unet_down_blocks_(\d)_downsamplers_", name)
    if m:
        return f"IN{3 * int(m.group(1)) + 3:02d}"
    m = re.match(r"lora_unet_up_blocks_(\d)_(attentions|resnets)_(\d)_", name)
    if m:
        return f"OUT{3 * int(m.group(1)) + int(m.group(3)):02d}"
    m = re.match(r"lora_unet_up_blocks_(\d)_upsamplers_", name)
    if m:
        return f"OUT{3 * int(m.group(1)) + 2:02d}"
    if name.startswith("lora_unet_mid_block_"):
        return "M00"
    return None


def factor_17(values: list[float], name: str) -> float:
    block = block_17(name)
    return 1.0 if block is None else (values[SD1_17.index(block)] if block in SD1_17 else 0.0)
