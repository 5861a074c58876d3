"""lbw block-weight strings, as sd-webui-lora-block-weight accepts them.

A spec is a preset name from preset.txt or a comma list of 17 or 26 values (SD1/SD2) or
12 or 20 values (SDXL).  Values are numbers (negatives allowed) or ``X``, ``X+d``, ``X-d``
(the ``x`` argument, default 1, plus or minus d).  The result is the 26-slot dict of
lbw_blocks.BLOCK_IDS; slots a short form does not name get 0.  Unlike lora-block-weight,
a length that does not fit the model family, an unknown preset and the random tokens
``R``/``U`` are errors, never silently ignored.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from .errors import LoraMergeError
from .lbw_blocks import BLOCK_IDS, FAMILY_LABEL, FAMILY_LENGTHS, block_of, to_slots
from .sigma import parse_number, show

if TYPE_CHECKING:
    from .presets import Presets

__all__ = ["BLOCK_IDS", "block_of", "parse_lbw", "lbw_factor", "lbw_values", "allowed_lengths"]

_X = re.compile(r"[Xx]\s*(?:([+-])(.*))?")
_RANDOM = frozenset("RrUu")


def _token(token: str, x: float, what: str) -> float:
    tok = token.strip()
    if tok in _RANDOM:
        raise LoraMergeError(f"{what}: random weights ('{tok}') are not supported, because they are not "
                             "reproducible; write the numbers instead")
    if m := _X.fullmatch(tok):
        if m.group(1) is None:
            return float(x)
        if not m.group(2).strip():
            raise LoraMergeError(f"{what}: '{show(tok)}' needs a number after the sign")
        delta = parse_number(m.group(2), what)
        value = float(x) + delta if m.group(1) == "+" else float(x) - delta
        if not math.isfinite(value):
            raise LoraMergeError(f"{what}: '{show(tok)}' is too large")
        return value
    return parse_number(tok, what)


def lbw_values(text: str, x: float = 1.0, what: str | None = None) -> list[float]:
    """The numbers of a comma list of lbw tokens (no length check)."""
    what = what or f"lbw '{show(text)}'"
    return [_token(t, x, what) for t in text.split(",")]


def allowed_lengths(family: str) -> tuple[int, ...]:
    """List lengths an lbw spec may have for a model family; LoraMergeError for an unknown family."""
    try:
        return FAMILY_LENGTHS[family]
    except (KeyError, TypeError):
        known = ", ".join(FAMILY_LENGTHS)
        raise LoraMergeError(f"unknown model family '{show(str(family))}'; expected one of {known}") from None


def _from_preset(name: str, presets, family: str, x: float) -> list[float]:
    lengths = allowed_lengths(family)
    forms = presets[name]
    counts = [len(f.split(",")) for f in forms]
    for form, count in zip(forms, counts):
        if count in lengths:
            return lbw_values(form, x, f"lbw preset '{name}'")
    have = " and ".join(str(c) for c in counts)
    skipped = getattr(presets, "skipped", {}).get(name)
    why = f"; skipped when the preset file was read: {skipped}" if skipped else ""
    raise LoraMergeError(f"preset '{name}' has no {FAMILY_LABEL[family]} form "
                         f"(it has {have} values; {FAMILY_LABEL[family]} needs {_or(lengths)}){why}")


def _or(lengths) -> str:
    return " or ".join(str(n) for n in lengths)


def _unknown_preset(name: str, family: str, presets) -> LoraMergeError:
    skipped = getattr(presets, "skipped", {}).get(name)
    if skipped:
        return LoraMergeError(f"lbw preset '{show(name)}' was skipped when the preset file was read ({skipped})")
    from .presets import preset_names
    names = preset_names(presets, family)
    listed = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return LoraMergeError(f"unknown lbw preset '{show(name)}'; known {FAMILY_LABEL[family]} presets: "
                          f"{listed or 'none'} (or give {_or(allowed_lengths(family))} numbers)")


def parse_lbw(spec: str | None, family: str, presets: "Presets | None" = None,
              x: float = 1.0) -> dict[str, float] | None:
    """The 26-slot block-weight dict (block id → factor) of an lbw spec, or None for no spec.

    `presets` defaults to the project's preset.txt (read only when the spec is a name).
    """
    lengths = allowed_lengths(family)
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        raise LoraMergeError(f"lbw x value {show(repr(x))} is not a finite number")
    if spec is None or not str(spec).strip():
        return None
    text = str(spec).strip()
    if "," not in text:
        if presets is None:
            from .presets import load_presets
            presets = load_presets()
        if text in presets:
            return to_slots(_from_preset(text, presets, family, x))
        try:
            _token(text, x, "")
        except LoraMergeError:
            raise _unknown_preset(text, family, presets) from None
    what = f"lbw '{show(text)}'"
    count = text.count(",") + 1
    if count not in lengths:
        noun = "value" if count == 1 else "values"
        raise LoraMergeError(f"{what} has {count} {noun}; {FAMILY_LABEL[family]} needs {_or(lengths)} "
                             "(or a preset name)")
    return to_slots(lbw_values(text, x, what))


def lbw_factor(weights: dict[str, float] | None, module: str) -> float:
    """A module's block factor: 1 without weights or for a module outside every block."""
    if weights is None:
        return 1.0
    block = block_of(module)
    return 1.0 if block is None else float(weights.get(block, 0.0))

