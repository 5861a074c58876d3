"""One buffer for every factor a merge writes, laid out as the saved file holds them.

safetensors stores the tensors of one dtype sorted by name.  When a merge writes its up and down
factors into views of one buffer in that order, the file's data section is that buffer: saving
writes (and hashes) it in a few large pieces, and the buffer can use huge pages (see byte_buffer).
"""
from __future__ import annotations

import math

import torch

from .byte_buffer import byte_buffer

DOWN_KEY, UP_KEY, ALPHA_KEY = "{}.lora_down.weight", "{}.lora_up.weight", "{}.alpha"  # kohya tensor names


class FactorArena:
    """Views (up (out, r), down (r, k)) of dtype for each module, back to back in file order."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]], dtype: torch.dtype):
        entries = []
        for name, (up, down) in shapes.items():
            entries += [(DOWN_KEY.format(name), name, 1, down), (UP_KEY.format(name), name, 0, up)]
        entries.sort(key=lambda e: e[0])
        size = dtype.itemsize
        buffer = byte_buffer(sum(math.prod(shape) for *_, shape in entries) * size)
        self._factors: dict[str, list] = {name: [None, None] for name in shapes}
        at = 0
        for _key, name, role, shape in entries:
            nbytes = math.prod(shape) * size
            self._factors[name][role] = buffer[at:at + nbytes].view(dtype).reshape(shape)
            at += nbytes

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) to fill for module name."""
        up, down = self._factors[name]
        return up, down
