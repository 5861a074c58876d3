"""The "LJL hashes" infotext field: ``name: shorthash, …`` of the files ``<ljl:…>`` tags used (like
"Lora hashes"), and the paste handler that rewrites ``<ljl:NAME`` to the local alias of the file
with that hash, so "Send to txt2img" and PNG Info reproduce the image on another install."""
from __future__ import annotations

import re
import sys

FIELD = "LJL hashes"
_REMOVE = str.maketrans("", "", ":,")
_TAG_NAME = re.compile(r"<ljl:([^:>]+)(?=[:>])")


def start_pass(p) -> None:
    """Start collecting for this pass (a hires pass adds to the first pass's hashes)."""
    if not getattr(p, "is_hr_pass", False) or not hasattr(p, "ljl_hashes"):
        p.ljl_hashes = {}


def record(p, mentioned_name: str, shorthash: str) -> None:
    if shorthash:
        p.ljl_hashes[mentioned_name.translate(_REMOVE)] = shorthash


def write(p) -> None:
    from modules import shared
    if not getattr(shared.opts, "lora_add_hashes_to_infotext", True):
        return
    if getattr(p, "ljl_hashes", None):
        p.extra_generation_params[FIELD] = ", ".join(f"{k}: {v}" for k, v in p.ljl_hashes.items())


def parse_field(text: str) -> dict[str, str]:
    out = {}
    for part in str(text).split(","):
        name, colon, value = part.strip().partition(":")
        if colon and name.strip() and value.strip():
            out[name.strip()] = value.strip()
    return out


def on_infotext_pasted(infotext: str, params: dict) -> None:
    hashes = parse_field(params.get(FIELD) or "")
    networks = sys.modules.get("networks")
    if not hashes or networks is None:
        return
    lookup = getattr(networks, "available_network_hash_lookup", {})

    def replace(m):
        shorthash = hashes.get(m.group(1).translate(_REMOVE))
        entry = lookup.get(shorthash) if shorthash else None
        return f"<ljl:{entry.get_alias()}" if entry is not None else m.group(0)

    for field in ("Prompt", "Hires prompt"):
        if params.get(field):
            params[field] = _TAG_NAME.sub(replace, params[field])
