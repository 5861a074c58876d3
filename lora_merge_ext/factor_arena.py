"""One buffer holding the whole data section of a concat merge's output, laid out as the file holds it.

safetensors stores tensors by dtype, then by name.  When a merge writes its up and down factors (and
its alphas) into views of one buffer in that order, the file's data section is that buffer: saving
writes it in a few large pieces, the buffer can use huge pages (see byte_buffer), and its sha256
(the file's sshs_model_hash) is computed on a thread that follows the merge module by module,
instead of after it.
"""
from __future__ import annotations

import hashlib
import math
import threading

import numpy
import torch

from .byte_buffer import byte_buffer
from .safetensors_write import write_position

DOWN_KEY, UP_KEY, ALPHA_KEY = "{}.lora_down.weight", "{}.lora_up.weight", "{}.alpha"  # kohya tensor names
ALPHA_DTYPE = torch.float32  # as api.state_dict saves alphas
_SMALL_VIEW = 64  # bytes: a piece this small may be a copy of the arena's bytes (an alpha), compared by value


def data_layout(shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], dtype: torch.dtype
                ) -> list[tuple[str, str, str, tuple[int, ...], torch.dtype]]:
    """(key, module, role, shape, dtype) of every tensor of a LoRA file whose modules have these
    (up, down) shapes, in the order of its data section; role is "alpha", "down" or "up".  Factors
    are in dtype, alphas in float32."""
    entries = []
    for name, (up, down) in shapes.items():
        entries += [(ALPHA_KEY.format(name), name, "alpha", (), ALPHA_DTYPE),
                    (DOWN_KEY.format(name), name, "down", tuple(down), dtype),
                    (UP_KEY.format(name), name, "up", tuple(up), dtype)]
    entries.sort(key=lambda e: write_position(e[0], e[4]))
    return entries


class FactorArena:
    """Views (up (out, r), down (r, k)) of dtype for each module, and its alpha (float32, set at once),
    back to back in file order; mark_filled(name) when a module's factors are written."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]], dtype: torch.dtype,
                 alphas: dict[str, float]):
        entries = data_layout(shapes, dtype)
        self.buffer = byte_buffer(sum(math.prod(e[3]) * e[4].itemsize for e in entries))
        self._factors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in shapes}
        self._ends: dict[str, int] = {}
        at = 0
        for _key, name, role, shape, dt in entries:
            nbytes = math.prod(shape) * dt.itemsize
            view = self.buffer[at:at + nbytes].view(dt).reshape(shape)
            at += nbytes
            if role == "alpha":
                view.fill_(alphas[name])
            else:
                self._factors[name][role] = view
            self._ends[name] = at
        self._filled: set[str] = set()
        self._abandoned = False
        self._changed = threading.Condition()
        self._digest = hashlib.sha256()
        self._hasher: threading.Thread | None = None

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) to fill for module name."""
        return self._factors[name]["up"], self._factors[name]["down"]

    def fill_order(self) -> list[str]:
        """Module names in the order their bytes lie in the file (fill them in this order)."""
        return sorted(self._ends, key=self._ends.__getitem__)

    def start_hash(self) -> None:
        """Start hashing on a thread that takes each module as soon as it and those before it are filled."""
        self._hasher = threading.Thread(target=self._hash, name="sshs-hash-ahead", daemon=True)
        self._hasher.start()

    def mark_filled(self, name: str) -> None:
        with self._changed:
            self._filled.add(name)
            self._changed.notify_all()

    def abandon(self) -> None:
        """The merge failed: stop hashing."""
        with self._changed:
            self._abandoned = True
            self._changed.notify_all()

    def sealed_hash(self) -> "ArenaHash":
        """The hash of the arena as it is now (every module filled); see ArenaHash."""
        return ArenaHash(self)

    def _hash(self) -> None:
        data, at = memoryview(self.buffer.numpy()), 0
        for name in self.fill_order():
            with self._changed:
                while name not in self._filled and not self._abandoned:
                    self._changed.wait()
                if self._abandoned:
                    return
            self._digest.update(data[at:self._ends[name]])
            at = self._ends[name]


class ArenaHash:
    """sha256 of a filled arena, for a save of exactly these bytes.  Valid while the arena is unchanged:
    any torch write into a view bumps the version counter that all views share (a write that bypasses
    it, such as through ``.data`` or numpy, is not seen)."""

    def __init__(self, arena: FactorArena):
        self._arena = arena
        self._version = arena.buffer._version

    def covers(self, views: list[memoryview]) -> bool:
        """True when views, in order, are the arena's bytes: views of the arena itself at the same
        place, or small copies (alphas) equal to the bytes there."""
        buffer = self._arena.buffer
        if buffer._version != self._version:
            return False
        data, base, at = memoryview(buffer.numpy()), buffer.data_ptr(), 0
        for view in views:
            n = len(view)
            if n == 0:
                continue
            if at + n > len(data):
                return False
            if _address(view) != base + at and (n > _SMALL_VIEW or view.tobytes() != data[at:at + n].tobytes()):
                return False
            at += n
        return at == len(data)

    def hexdigest(self) -> str:
        arena = self._arena
        if arena._hasher is None:
            raise RuntimeError("the arena was never hashed (start_hash not called)")
        arena._hasher.join()
        return arena._digest.hexdigest()


def _address(view: memoryview) -> int:
    return numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data
