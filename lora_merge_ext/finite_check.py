"""Find NaN and Inf values fast: by exponent bits over whole runs of a file's buffer, or by one
sum per tensor (NaN and Inf propagate into a sum); anything suspicious is checked exactly."""
from __future__ import annotations

from typing import Mapping

import torch

# float dtype → (integer dtype of the same width, mask without the sign bit, smallest non-finite pattern)
_EXPONENT_ALL_ONES = {
    torch.float16: (torch.int16, 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


_CHUNK = 1 << 20  # values masked at a time, in one reused scratch buffer (no file-sized temporary)


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
        if dtype not in _EXPONENT_ALL_ONES:
            bad.update(key for key, t in items if _exactly_nonfinite(t))
            continue
        sums = torch.isfinite(torch.stack([t.sum() for _, t in items])).tolist()
        bad.update(key for (key, t), ok in zip(items, sums) if not ok and _exactly_nonfinite(t))
    return [key for key in tensors if key in bad]


def runs_are_finite(buffer: torch.Tensor, runs: list[tuple[torch.dtype, int, int]]) -> bool:
    """True when no run (dtype, begin, end) of the uint8 buffer holds a NaN or Inf.  Each run is read
    as integers: a value is non-finite exactly when its exponent bits are all ones.  Returns False
    (not proven) for runs it cannot read that way (float8, misaligned)."""
    for dtype, begin, end in runs:
        if dtype not in _EXPONENT_ALL_ONES:
            if dtype.is_floating_point:
                return False
            continue
        as_int, mask, first_bad = _EXPONENT_ALL_ONES[dtype]
        size = dtype.itemsize
        if begin % size or (end - begin) % size:
            return False
        bits = buffer[begin:end].view(as_int)
        scratch = torch.empty(min(bits.numel(), _CHUNK), dtype=as_int)
        for at in range(0, bits.numel(), _CHUNK):
            part = bits[at:at + _CHUNK]
            masked = torch.bitwise_and(part, mask, out=scratch[:part.numel()])
            if int(masked.max()) >= first_bad:
                return False
    return True


def block_is_finite(values: torch.Tensor, scratch: torch.Tensor) -> bool:
    """True when the contiguous fp32/fp16/bf16 tensor values holds no NaN or Inf, read by exponent
    bits through scratch (a uint8 tensor of at least values' size, reused between calls so that no
    fresh memory is touched)."""
    as_int, mask, first_bad = _EXPONENT_ALL_ONES[values.dtype]
    bits = values.reshape(-1).view(as_int)
    masked = torch.bitwise_and(bits, mask, out=scratch[:values.numel() * values.element_size()].view(as_int))
    return bits.numel() == 0 or int(masked.max()) < first_bad
