"""lbw block tables and the kohya module name → block rule (facts from sd-webui-lora-block-weight).

Every lbw list is normalised to one 26-slot layout: BASE (the text encoders), IN00..IN11,
M00, OUT00..OUT11.  The short forms name only some slots; the others get 0.
"""
from __future__ import annotations

import re
from functools import lru_cache

BLOCK_IDS: tuple[str, ...] = (
    ("BASE",) + tuple(f"IN{i:02d}" for i in range(12)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(12)))

# The ids each list form names, in list order (LORA_BLOCK_WEIGHT.md §1).
FORMS: dict[int, tuple[str, ...]] = {
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    26: BLOCK_IDS,
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    20: ("BASE",) + tuple(f"IN{i:02d}" for i in range(9)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(9)),
}

# List lengths each model family accepts, short form first.
FAMILY_LENGTHS: dict[str, tuple[int, ...]] = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}
FAMILY_LABEL: dict[str, str] = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def to_slots(values: list[float]) -> dict[str, float]:
    """A list of one of the FORMS lengths as the 26-slot dict (slots the form does not name get 0)."""
    slots = dict.fromkeys(BLOCK_IDS, 0.0)
    slots.update(zip(FORMS[len(values)], values))
    return slots


_N = r"([0-9]{1,3})(?:_|\Z)"  # a block index, then "_" or the end: input_blocks_1_ never matches input_blocks_10_
_TE = re.compile(r"lora_te[12]?_")
_SGM = re.compile(r"lora_unet_(?:(middle_block)_|(input_blocks|output_blocks)_" + _N + ")")
_DOWN = re.compile(r"lora_unet_down_blocks_([0-9]{1,3})_(attentions|resnets|downsamplers)_" + _N)
_UP = re.compile(r"lora_unet_up_blocks_([0-9]{1,3})_(attentions|resnets|upsamplers)_" + _N)
_MID = re.compile(r"lora_unet_mid_block_(?:attentions|resnets)_" + _N)
_CONV_IN = re.compile(r"lora_unet_conv_in(?:_|\Z)")


def _slot(prefix: str, index: int) -> str | None:
    return f"{prefix}{index:02d}" if 0 <= index < 12 else None


@lru_cache(maxsize=8192)
def block_of(module: str) -> str | None:
    """The lbw block of a kohya module name, or None for modules outside every block (factor 1).

    Text encoders (te, te1, te2) → BASE.  SGM UNet names (input_blocks_N_, middle_block_,
    output_blocks_N_) map directly; diffusers-style names go through A1111's index arithmetic
    (down_blocks_i resnets/attentions_j → IN(3i+j+1), downsamplers → IN(3i+3), up_blocks_i
    resnets/attentions_j → OUT(3i+j), upsamplers → OUT(3i+2), mid_block → M00, conv_in → IN00).
    time_embed(ding), label_emb, conv_out, out_… and anything unknown → None.
    A tensor suffix (".lora_up.weight", ".alpha", …) is ignored.
    """
    name = module.split(".", 1)[0]
    if _TE.match(name):
        return "BASE"
    if m := _SGM.match(name):
        if m.group(1):
            return "M00"
        return _slot("IN" if m.group(2) == "input_blocks" else "OUT", int(m.group(3)))
    if m := _DOWN.match(name):
        i, kind, j = int(m.group(1)), m.group(2), int(m.group(3))
        return _slot("IN", 3 * i + 3 if kind == "downsamplers" else 3 * i + j + 1)
    if m := _UP.match(name):
        i, kind, j = int(m.group(1)), m.group(2), int(m.group(3))
        return _slot("OUT", 3 * i + 2 if kind == "upsamplers" else 3 * i + j)
    if _MID.match(name):
        return "M00"
    if _CONV_IN.match(name):
        return "IN00"
    return None
