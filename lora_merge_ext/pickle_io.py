"""Read a pickled state dict (.pt, .ckpt, .bin, .pth) without ever running code from the file.

torch.load(weights_only=True) only rebuilds tensors and plain containers; any other global in the
pickle is refused. The result must be a flat {str: tensor} dict, or one under "state_dict".
"""
from __future__ import annotations

import os
import warnings

import torch

from .safetensors_header import fail, open_input_file, show

CONVERT_HINT = "convert it to .safetensors with a tool you trust"
def _reason(error: Exception) -> str:
    """The informative sentence of a torch.load error, never its advice to turn weights_only off."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    for line in text.splitlines():
        line = line.strip().split(". ")[0].rstrip(".")
        boilerplate = ("weights only load failed", "check the")
        if line and "weights_only" not in line and not line.lower().startswith(boilerplate):
            return show(line, 160)
    return "the file holds objects other than tensors" if "Weights only" in str(error) else type(error).__name__


def _as_state_dict(obj: object, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise fail(path, f"expected a dict of tensors, the file holds a {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise fail(path, f"expected a dict of tensors with string keys, found key {show(repr(key), 60)}")
        if not isinstance(value, torch.Tensor):
            raise fail(path, f"expected a dict of tensors, {show(key)!r} holds a {type(value).__name__}")
        if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
            raise fail(path, f"tensor {show(key)!r} is not a plain dense tensor ({value.layout}, {value.device})")
        out[key] = value.detach()
    return out


def read_pickled_state_dict(path: os.PathLike | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, {}) from a pickled checkpoint, loaded with weights_only=True on the CPU."""
    f, size = open_input_file(path)
    with f:
        if size == 0:
            raise fail(path, "file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(f, map_location="cpu", weights_only=True, mmap=False)
        except MemoryError:
            raise fail(path, f"cannot load this pickled file (out of memory); {CONVERT_HINT}") from None
        except Exception as e:  # whatever a hostile or broken pickle makes torch raise
            raise fail(path, f"refused to unpickle ({_reason(e)}); only plain tensor files load, "
                             f"{CONVERT_HINT}") from None
    return _as_state_dict(obj, path), {}
