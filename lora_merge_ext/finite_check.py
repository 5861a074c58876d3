"""Find NaN and Inf values fast: by the extremes of whole runs of a file's buffer (one pass that
writes nothing), or by one sum per tensor (NaN and Inf propagate into both); anything suspicious is
checked exactly."""
from __future__ import annotations

from typing import Mapping

import torch

_FAST = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # dtypes checked by sums and extremes


def _is_float(t: torch.Tensor) -> bool:
    return (t.is_floating_point() or t.is_complex()) and t.numel() > 0


def _exactly_nonfinite(t: torch.Tensor) -> bool:
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        t = t.float()
    return not bool(torch.isfinite(t).all())


def find_nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating-point tensors that hold a NaN or an infinity.  One sum per tensor, stacked
    per dtype and checked at once; a tensor whose sum is not finite (NaN, Inf or overflow) is checked exactly."""
    by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for key, t in tensors.items():
        if _is_float(t):
            by_dtype.setdefault(t.dtype, []).append((key, t))
    bad = set()
    for dtype, items in by_dtype.items():
        if dtype not in _FAST:
            bad.update(key for key, t in items if _exactly_nonfinite(t))
            continue
        sums = torch.isfinite(torch.stack([t.sum() for _, t in items])).tolist()
        bad.update(key for (key, t), ok in zip(items, sums) if not ok and _exactly_nonfinite(t))
    return [key for key in tensors if key in bad]


def runs_are_finite(buffer: torch.Tensor, runs: list[tuple[torch.dtype, int, int]]) -> bool:
    """True when no run (dtype, begin, end) of the uint8 buffer holds a NaN or Inf.  Returns False
    (not proven) for runs it cannot read as their dtype (float8, misaligned)."""
    for dtype, begin, end in runs:
        if dtype not in _FAST:
            if dtype.is_floating_point:
                return False
            continue
        size = dtype.itemsize
        if begin % size or (end - begin) % size:
            return False
        if not block_is_finite(buffer[begin:end].view(dtype)):
            return False
    return True


def block_is_finite(values: torch.Tensor) -> bool:
    """True when the fp32/fp16/bf16/fp64 tensor values holds no NaN or Inf: its smallest and largest
    values, found in one pass that writes nothing, are finite (aminmax propagates NaN)."""
    if values.numel() == 0:
        return True
    flat = values.reshape(-1)
    if _AMINMAX.get(flat.dtype, True):
        try:
            low, high = torch.aminmax(flat)
        except RuntimeError:  # torch before 2.2 has no aminmax of fp16/bf16 on the CPU
            _AMINMAX[flat.dtype] = False
            return block_is_finite(values)
    else:
        low, high = flat.min(), flat.max()  # two passes, NaN propagates as well
    return bool(torch.isfinite(torch.stack([low, high])).all())


_AMINMAX: dict[torch.dtype, bool] = {}  # dtype → whether this torch has aminmax for it (unknown: try)
