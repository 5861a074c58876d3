"""Metadata of written LoRAs: recomputed dims, the inputs' base model kept, provenance, no copied names."""
from __future__ import annotations

import json
import time

from . import __version__
from .family import family_from_metadata
from .lora_file import LoraFile

KEPT_FROM_INPUTS = ("ss_base_model_version", "ss_v2", "modelspec.architecture")
BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def dims(lora: LoraFile) -> dict[str, str]:
    """ss_network_dim / ss_network_alpha: the common value, or "Dynamic" when modules differ."""
    ranks = {m.rank for m in lora.modules.values()}
    alphas = {m.alpha if m.alpha is not None else float(m.rank) for m in lora.modules.values()}
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    alpha = _number(alphas.pop()) if len(alphas) == 1 else "Dynamic"
    return {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha}


def base_model(inputs: list[LoraFile], family: str) -> dict[str, str]:
    """The first input's base-model keys (so the WebUI files the card under the right model), each
    kept only when it agrees with the family the tensors show."""
    out: dict[str, str] = {}
    for lora in inputs:
        for key in KEPT_FROM_INPUTS:
            if key in lora.metadata and key not in out and _agrees(key, lora.metadata[key], family):
                out[key] = lora.metadata[key]
    out.setdefault("ss_base_model_version", BASE_VERSION[family])
    out.setdefault("ss_v2", "True" if family == "sd2" else "False")
    return out


def _agrees(key: str, value: str, family: str) -> bool:
    """Whether a base-model key's value fits the family (a value it cannot place fits)."""
    if key == "ss_v2":
        return value not in ("True", "False") or (value == "True") == (family == "sd2")
    if key == "ss_base_model_version":
        named = family_from_metadata({key: value})
    else:  # modelspec.architecture: stable-diffusion-v1/lora, …-v2-768-v/…, …-xl-v1-base/…
        kind = value.removeprefix("stable-diffusion-") if value.startswith("stable-diffusion-") else ""
        named = "sdxl" if kind.startswith("xl") else "sd2" if kind.startswith("v2") else \
            "sd1" if kind.startswith("v1") else None
    return named in (None, family)


def output_metadata(result: LoraFile, inputs: list[LoraFile], provenance: dict) -> dict[str, str]:
    """All metadata of an output file except the hashes, which are computed when it is written."""
    meta = dict(base_model(inputs, result.family))
    meta.update(dims(result))
    meta.update({k: v for k, v in result.metadata.items() if k.startswith("ljl_")})
    meta["ljl_provenance"] = json.dumps({"tool": "lora_merge_ext", "version": __version__,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         **provenance}, separators=(",", ":"))
    return meta


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
