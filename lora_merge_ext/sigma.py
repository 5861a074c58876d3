"""Σ vectors: which ranks of a (joined) LoRA are used, and how strongly.

A Σ string is read against a JoinLayout and always becomes one factor per rank
(length ``layout.total_rank``).  Accepted forms:

* one number: every rank scaled by it (``1`` behaves like a plain ``<lora:J:1>``);
* one number per component, in join order (``1,0``);
* one number per rank (``1,1,1,1,0,0``);
* repeats in either list form: ``2.5*8`` is eight 2.5, mixable with single numbers
  (``1*4,0,0.5*3``);
* named components: ``NAME=value`` entries (``style=0.5,face=1``); components not
  named get 0.  Named and unnamed entries cannot be mixed.

When a list is as long as both the number of components and the total rank (each
component has rank 1) the two readings give the same vector.  Numbers are plain
decimals (``-1``, ``.5``, ``2e-3``); nan and inf are refused; negative values are fine.

When a component has fewer ranks in some module than its rank, its slice of the
per-rank vector applies to the module's first ranks (see ``JoinLayout.module_vector``).
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Sequence

from .errors import LoraMergeError

_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_COUNT = re.compile(r"[0-9]+")
MAX_COUNT_DIGITS = 9  # a repeat count above 999,999,999 is refused before any arithmetic


def show(text: str, limit: int = 60) -> str:
    """A value as it appears inside a one-line error message (whitespace runs folded, cut when long)."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[:limit - 1] + "…"


def parse_number(token: str, what: str) -> float:
    """One finite decimal number (surrounding whitespace allowed), else LoraMergeError naming `what`."""
    tok = token.strip()
    if not _NUMBER.fullmatch(tok):
        if not tok:
            raise LoraMergeError(f"{what} has an empty entry")
        raise LoraMergeError(f"{what}: '{show(tok)}' is not a number")
    value = float(tok)
    if not math.isfinite(value):
        raise LoraMergeError(f"{what}: '{show(tok)}' is too large")
    return value


def _entries(text: str, what: str) -> list[tuple[float, int]]:
    """(value, repeat count) pairs of a comma list with `v*n` repeats; counts are validated, not expanded."""
    pairs = []
    for entry in text.split(","):
        value_text, star, count_text = entry.partition("*")
        value = parse_number(value_text, what)
        count = 1
        if star:
            digits = count_text.strip()
            significant = digits.lstrip("0")
            if not _COUNT.fullmatch(digits) or not significant:
                raise LoraMergeError(
                    f"{what}: repeat count in '{show(entry.strip())}' must be a whole number of at least 1")
            if len(significant) > MAX_COUNT_DIGITS:
                raise LoraMergeError(f"{what}: repeat count in '{show(entry.strip())}' is too large")
            count = int(significant)
        pairs.append((value, count))
    return pairs


def _expand(pairs: list[tuple[float, int]]) -> list[float]:
    out: list[float] = []
    for value, count in pairs:
        out.extend([value] * count)
    return out


def _expected(n_comp: int, total: int) -> str:
    """The accepted lengths, in words, for an error message."""
    if n_comp == total:
        choices = ["1"] if total == 1 else ["1", f"{total} (one per component or per rank)"]
    else:
        choices = ["1"] if n_comp == 1 else ["1", f"{n_comp} (one per component)"]
        choices.append(f"{total} (one per rank)")
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


def _per_component(values: Sequence[float], layout) -> list[float]:
    out: list[float] = []
    for value, comp in zip(values, layout.components):
        out.extend([float(value)] * comp.rank)
    return out


def _parse_named(text: str, layout, what: str) -> list[float]:
    names = [c.name.strip() for c in layout.components]
    chosen: dict[str, float] = {}
    for entry in text.split(","):
        if "=" not in entry:
            raise LoraMergeError(
                f"{what}: '{show(entry.strip())}' has no name; use NAME=value for every entry or for none")
        name_text, _, value_text = entry.rpartition("=")
        name = name_text.strip()
        if name not in names:
            known = ", ".join(names)
            raise LoraMergeError(f"{what}: unknown component '{show(name)}'; components are {known}")
        if names.count(name) > 1:
            raise LoraMergeError(f"{what}: component name '{show(name)}' is used by several components; "
                                 "give one number per component instead")
        if name in chosen:
            raise LoraMergeError(f"{what}: component '{show(name)}' is named twice")
        chosen[name] = parse_number(value_text, what)
    return _per_component([chosen.get(n, 0.0) for n in names], layout)


def _numbers_text(value) -> str:
    """A number or a sequence of numbers as a comma list; LoraMergeError for anything else."""
    try:
        if isinstance(value, bool):
            raise TypeError
        items = [value] if isinstance(value, numbers.Real) else list(value)
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        return ",".join(repr(float(v)) for v in items)
    except (TypeError, ValueError):
        raise LoraMergeError(f"Σ vector {show(repr(value))} is not a Σ string or a list of numbers") from None


def parse_sigma(text, layout) -> list[float]:
    """The per-rank Σ vector (length layout.total_rank) that a Σ string means for this layout.

    `text` is a Σ string; a number or a sequence of numbers (list, tuple, numpy array, 1-d tensor)
    is also accepted and read as the same list.
    """
    if text is not None and not isinstance(text, str):
        text = _numbers_text(text)
    if text is None or not text.strip():
        raise LoraMergeError("Σ vector is empty; expected a number, one per component or one per rank")
    what = f"Σ vector '{show(text)}'"
    if "=" in text:
        return _parse_named(text, layout, what)
    n_comp, total = len(layout.components), layout.total_rank
    pairs = _entries(text, what)
    length = sum(count for _, count in pairs)
    if length == 1:
        return [pairs[0][0]] * total
    if length == n_comp:
        return _per_component(_expand(pairs), layout)
    if length == total:
        return _expand(pairs)
    noun = "value" if length == 1 else "values"
    raise LoraMergeError(f"{what} has {length} {noun}; expected {_expected(n_comp, total)}")


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        raise LoraMergeError(f"Σ value {value} is not a finite number")
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def format_sigma(values: Sequence[float]) -> str:
    """A compact Σ string (runs written as `v*n`) that parse_sigma reads back as the same per-rank vector."""
    parts = []
    i = 0
    values = [float(v) for v in values]
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        text = _format_number(values[i])
        parts.append(text if j == i else f"{text}*{j - i + 1}")
        i = j + 1
    return ",".join(parts)
