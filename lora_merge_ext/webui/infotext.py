"""The "LJL hashes" infotext field: ``name: shorthash, …`` of the files ``<ljl:…>`` tags used (like
"Lora hashes"), and the paste handler that rewrites ``<ljl:NAME`` to the local alias of the file
with that hash, so "Send to txt2img" and PNG Info reproduce the image on another install."""
from __future__ import annotations

import re
import sys

FIELD = "LJL hashes"
_REMOVE = str.maketrans("", "", ":,")
_TAG_NAME = re.compile(r"<ljl:([^:>]+)(?=[:>])")


def file_shorthash(entry, cached, memo: dict) -> str:
    """A file version's hash as "Lora hashes" shows it: ``sshs_model_hash``, else the addnet hash
    (through the host's hash cache).  The host's NetworkOnDisk learns it too, so pasting finds it."""
    known = memo.get(cached.identity)
    if known is not None:
        return known
    full = cached.lora.metadata.get("sshs_model_hash") or ""
    if not full:
        try:
            from modules import hashes
            full = hashes.sha256(entry.filename, "lora/" + entry.name,
                                 use_addnet_hash=getattr(entry, "is_safetensors", True)) or ""
        except ImportError:
            from ..safetensors_io import tensor_data_sha256
            full = tensor_data_sha256(entry.filename)
    if full and getattr(entry, "hash", None) != full and hasattr(entry, "set_hash"):
        entry.set_hash(full)
    memo[cached.identity] = full[:12]
    return full[:12]


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
