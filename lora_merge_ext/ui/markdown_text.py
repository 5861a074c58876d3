"""Text from files and from the user, shown in the tab's Markdown fields exactly as it is: a file
named `__init__`, a Σ of `1*4,0*4` or a component named `<b>` must not turn into bold, italics or HTML."""
from __future__ import annotations

import re

_MARKUP = re.compile(r"([\\`*_\[\]~|])")  # what Markdown reads as markup inside a line (our lines start with text)


def literal(text: object) -> str:
    """text for a Markdown field, shown as typed (HTML characters as entities, markup escaped)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKUP.sub(r"\\\1", text)


def code(text: object) -> str:
    """text as an inline code span, whatever backticks it holds (a fence one longer than its longest run)."""
    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
