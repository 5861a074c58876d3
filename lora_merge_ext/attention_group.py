"""The four projections of one text-encoder attention layer (q, k, v, out).  Where the text encoder
is a torch MultiheadAttention (SD2, SDXL's second encoder), the WebUI changes that layer only when
the LoRA has a module for each of the four; a module whose Σ is all zero must therefore stay (as a
zero) while a sibling is applied."""
from __future__ import annotations

import re

_PROJECTION = re.compile(r"^(lora_te[12]?_.*_self_attn)_(q|k|v|out)_proj$")


def attention_group(module_name: str) -> str | None:
    """The layer a q/k/v/out projection module belongs to, None for any other module."""
    found = _PROJECTION.match(module_name)
    return found.group(1) if found else None


def kept_with_siblings(all_names, live) -> set:
    """The live modules, plus every projection module whose attention layer has a live one."""
    live = set(live)
    groups = {attention_group(n) for n in live} - {None}
    return live | {n for n in all_names if attention_group(n) in groups}
