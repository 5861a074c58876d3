"""The `<ljl:NAME:VECTOR[:lbw=SPEC]>` text the tab builds from its sliders.

Sliders give one weight per component; the advanced field, when filled, takes any Σ form
(one number, per component, per rank, `v*n` repeats, `name=value`) and wins over the sliders.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import LoraMergeError
from ..layout import JoinLayout
from ..ljl_tag import format_vector
from ..sigma import parse_sigma, show
from .numbers import number_or_none

TAG_FORBIDDEN = (":", "<", ">")


def tag_name(path: str | os.PathLike) -> str:
    """The name a file is known by in the prompt: its base name without extension (as the WebUI lists it)."""
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def per_rank_vector(layout: JoinLayout, sliders: Sequence[float], advanced: str = "") -> list[float]:
    """The Σ per-rank vector: from the advanced text when given, else one slider value per component."""
    if advanced and advanced.strip():
        return parse_sigma(advanced.strip(), layout)
    values = [_slider_value(v, i, comp.name) for i, (v, comp) in enumerate(zip(sliders, layout.components))]
    if len(values) < len(layout.components):
        values += [1.0] * (len(layout.components) - len(values))
    out: list[float] = []
    for value, comp in zip(values, layout.components):
        out.extend([value] * comp.rank)
    return out


def _slider_value(value, index: int, component: str) -> float:
    """A slider's number; a cleared number box (None) or a non-number is refused, naming the component."""
    what = f"Σ of component {index + 1} ({show(component)})"
    number = number_or_none(value, what)
    if number is None:
        raise LoraMergeError(f"{what} is empty: enter a number")
    return number


def _check_item(value: str, what: str) -> str:
    value = value.strip()
    if any(c in value for c in TAG_FORBIDDEN):
        raise LoraMergeError(f"{what} '{show(value)}' cannot contain ':', '<' or '>' inside an <ljl:…> tag")
    return value


def build_tag(name: str, layout: JoinLayout, sliders: Sequence[float], advanced: str = "", lbw: str = "") -> str:
    """The prompt tag for the current sliders / advanced vector and lbw string."""
    name = _check_item(name, "LoRA name")
    if not name:
        raise LoraMergeError("no merged file yet: merge first, then build its tag")
    vector = format_vector(per_rank_vector(layout, sliders, advanced), layout)
    items = [name, vector]
    lbw = _check_item(lbw or "", "lbw")
    if lbw:
        items.append(f"lbw={lbw}")
    return "<ljl:" + ":".join(items) + ">"


def sigma_text(layout: JoinLayout, sliders: Sequence[float], advanced: str = "") -> str:
    """The Σ string (as `realize` reads it) for the current sliders / advanced vector."""
    return format_vector(per_rank_vector(layout, sliders, advanced), layout)
