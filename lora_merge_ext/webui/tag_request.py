"""One ``<ljl:…>`` tag, read from the host's ``ExtraNetworkParams.items``.

``<ljl:NAME[:VECTOR][:te=X][:unet=X][:lbw=SPEC][:x=X]>``: the host splits a tag on ``:`` and would
file any item holding exactly one ``=`` under ``named``, so the items are read here directly: an item
``te=``, ``unet=``, ``lbw=`` (or its alias ``w=``), ``x=`` (or ``dyn=``, refused) is an option,
anything else after the name is the Σ vector — which keeps named-component vectors such as
``style=1,face=0`` working, even when the first component is called ``x`` (two ``=``: a vector).
As with ``<lora>``, te defaults to 1 and unet to te; as with lora-block-weight, ``x=`` is the value
of ``X`` tokens in the lbw spec (default 1).  No vector means Σ = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LoraMergeError
from ..ljl_tag import OPTION_ALIASES, OPTION_KEYS, LjlTag, option_key
from ..sigma import show

FORM = "<ljl:NAME:VECTOR[:te=X][:unet=X][:lbw=SPEC][:x=X]>"
LBW_ONLY_OPTIONS = ("lbwe", "start", "stop", "step")  # lora-block-weight's own tag options


@dataclass(frozen=True)
class TagRequest:
    name: str
    sigma: str
    te: float
    unet: float
    lbw: str | None
    text: str
    x: float = 1.0  # the value of X tokens in lbw


def tag_text(items) -> str:
    return "<ljl:" + ":".join(str(i) for i in items) + ">"


def _multiplier(value: str, key: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise LoraMergeError(f"{key}='{show(value)}' is not a number") from None
    if not math.isfinite(number):
        raise LoraMergeError(f"{key}='{show(value)}' is not a finite number")
    return number


def read_tag(items) -> TagRequest:
    """The request of one tag's items (name first); LoraMergeError saying what is wrong when malformed."""
    items = [str(i) for i in items]
    text = tag_text(items)
    tag = LjlTag(0, 0, tuple(items))
    if not items or not tag.name:
        raise LoraMergeError(f"the LoRA name is empty; write {FORM}")
    options: dict[str, str] = {}
    for index, item in enumerate(items[1:], start=1):
        foreign = item.partition("=")[0]
        if item.count("=") == 1 and foreign.strip() in LBW_ONLY_OPTIONS:  # two or more: a named vector
            raise LoraMergeError(f"{foreign.strip()}= is a lora-block-weight option that <ljl> does not support "
                                 f"(<ljl> takes {', '.join(k + '=' for k in OPTION_KEYS if k != 'dyn')})")
        key = option_key(item)
        if key is not None:
            if key in options:
                spellings = "/".join([key, *(a for a, k in OPTION_ALIASES.items() if k == key)])
                raise LoraMergeError(f"{spellings}= is given twice")
            options[key] = item.partition("=")[2]
        elif index != 1:
            raise LoraMergeError(f"unexpected item '{show(item)}'; write {FORM}")
    if "dyn" in options:
        raise LoraMergeError("dyn= is not supported by <ljl>; choose ranks with a per-rank vector")
    te = _multiplier(options["te"], "te") if "te" in options else 1.0
    unet = _multiplier(options["unet"], "unet") if "unet" in options else te
    lbw = options.get("lbw")
    if lbw is not None and not lbw.strip():
        raise LoraMergeError("lbw= is empty; give a preset name or block weights")
    if "x" in options and lbw is None:
        raise LoraMergeError("x= sets X in lbw=, but the tag has no lbw=")
    x = _multiplier(options["x"], "x") if "x" in options else 1.0
    return TagRequest(tag.name, tag.vector if tag.vector is not None else "1", te, unet,
                      lbw.strip() if lbw is not None else None, text, x)
