"""Generate real-shaped kohya (or PEFT) LoRA files for SD1.5 and SDXL from the module specs.

Each spec row is [kohya_name, kind, out, in, kh, kw] with kind linear | conv1x1 | conv3x3.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

SPEC_DIR = Path(__file__).parent / "data" / "module_specs"
FAMILY_OF_SPEC = {"sd15_lora": "sd1", "sd15_locon": "sd1", "sdxl_lora": "sdxl", "sdxl_locon": "sdxl"}
BASE_VERSION = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}


def load_spec(spec: str) -> list[list]:
    return json.loads((SPEC_DIR / f"{spec}.json").read_text())


def make_tensors(spec: str, rank: int | Callable[[str], int] = 4, alpha: float | None | Callable[[str], float | None] = "half",
                 seed: int = 0, keep: Callable[[str], bool] | None = None, tucker: bool = False,
                 dtype: torch.dtype = torch.float32, conv3x3: bool = True) -> dict[str, torch.Tensor]:
    """Kohya state dict for a spec; alpha="half" gives alpha = rank/2, None gives no alpha key."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, kind, o, i, kh, kw in load_spec(spec):
        if keep is not None and not keep(name):
            continue
        if kind == "conv3x3" and not conv3x3:
            continue
        r = rank(name) if callable(rank) else rank
        a = alpha(name) if callable(alpha) else (r / 2 if alpha == "half" else alpha)
        if kind == "linear":
            down = torch.randn(r, i, generator=gen) / i ** 0.5
            up = torch.randn(o, r, generator=gen) / r ** 0.5
        elif kind == "conv1x1":
            down = torch.randn(r, i, 1, 1, generator=gen) / i ** 0.5
            up = torch.randn(o, r, 1, 1, generator=gen) / r ** 0.5
        elif tucker:
            down = torch.randn(r, i, 1, 1, generator=gen) / i ** 0.5
            out[f"{name}.lora_mid.weight"] = (torch.randn(r, r, kh, kw, generator=gen) / (r * kh * kw) ** 0.5).to(dtype)
            up = torch.randn(o, r, 1, 1, generator=gen) / r ** 0.5
        else:
            down = torch.randn(r, i, kh, kw, generator=gen) / (i * kh * kw) ** 0.5
            up = torch.randn(o, r, 1, 1, generator=gen) / r ** 0.5
        out[f"{name}.lora_down.weight"] = down.to(dtype)
        out[f"{name}.lora_up.weight"] = up.to(dtype)
        if a is not None:
            out[f"{name}.alpha"] = torch.tensor(float(a)).to(dtype)
    return out


def write_lora(path: Path, tensors: dict[str, torch.Tensor], family: str | None = "sd1",
               metadata: dict[str, str] | None = None) -> Path:
    meta = dict(metadata or {})
    if family and "ss_base_model_version" not in meta:
        meta["ss_base_model_version"] = BASE_VERSION[family]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return Path(path)


def make_lora(path: Path, spec: str = "sd15_lora", **kw) -> Path:
    """Write a kohya LoRA file for a spec and return its path (kwargs as make_tensors)."""
    metadata = kw.pop("metadata", None)
    return write_lora(path, make_tensors(spec, **kw), FAMILY_OF_SPEC[spec], metadata)


# --- PEFT / diffusers key forms -------------------------------------------------------------

_SD_WORDS = ["transformer_blocks", "down_blocks", "up_blocks", "mid_block", "text_model", "self_attn",
             "to_out", "proj_in", "proj_out", "ff_net", "q_proj", "k_proj", "v_proj", "out_proj",
             "to_q", "to_k", "to_v", "time_emb_proj", "conv_shortcut", "conv1", "conv2"]


def _dotted(rest: str) -> str:
    """Turn an underscore module path back into a dotted one, keeping the multi-word names."""
    protected = rest
    for i, word in enumerate(_SD_WORDS):
        protected = re.sub(rf"(?<![a-z]){word}(?![a-z])", f"@{i}@", protected)
    dotted = protected.replace("_", ".")
    return re.sub(r"@(\d+)@", lambda m: _SD_WORDS[int(m.group(1))], dotted)


def sgm_to_diffusers(rest: str) -> str:
    """SDXL SGM attention name (after lora_unet_) → diffusers underscore name (attention blocks only)."""
    m = re.match(r"input_blocks_(\d+)_1_(.*)", rest)
    if m:
        n = int(m.group(1))
        return f"down_blocks_{(n - 1) // 3}_attentions_{(n - 1) % 3}_{m.group(2)}"
    m = re.match(r"output_blocks_(\d+)_1_(.*)", rest)
    if m:
        n = int(m.group(1))
        return f"up_blocks_{n // 3}_attentions_{n % 3}_{m.group(2)}"
    m = re.match(r"middle_block_1_(.*)", rest)
    if m:
        return f"mid_block_attentions_0_{m.group(1)}"
    raise ValueError(f"not an attention module: {rest}")


def to_peft(tensors: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Rename kohya keys to PEFT form (lora_A/lora_B, unet./text_encoder./text_encoder_2.), alphas dropped
    after folding alpha/rank into lora_B so that ΔW is unchanged (PEFT files carry no per-module alpha)."""
    out = {}
    for key, t in tensors.items():
        name, suffix = key.split(".", 1)
        if suffix == "alpha" or suffix == "lora_mid.weight":
            continue
        if name.startswith("lora_unet_"):
            rest = name[len("lora_unet_"):]
            if family == "sdxl":
                rest = sgm_to_diffusers(rest)
            prefix = "unet."
        elif name.startswith("lora_te2_"):
            rest, prefix = name[len("lora_te2_"):], "text_encoder_2."
        elif name.startswith("lora_te1_"):
            rest, prefix = name[len("lora_te1_"):], "text_encoder."
        else:
            rest, prefix = name[len("lora_te_"):], "text_encoder."
        new_suffix = "lora_A.weight" if suffix == "lora_down.weight" else "lora_B.weight"
        if new_suffix == "lora_B.weight" and f"{name}.alpha" in tensors:
            t = t * (float(tensors[f"{name}.alpha"]) / t.shape[1])
        out[f"{prefix}{_dotted(rest)}.{new_suffix}"] = t
    return out
