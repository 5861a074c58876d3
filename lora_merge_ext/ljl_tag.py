"""`<ljl:…>` tags in prompt text, and the values of the X/Y/Z plot axes that rewrite them.

A tag is ``<ljl:NAME[:VECTOR][:te=X][:unet=X][:lbw=SPEC][:x=X]>`` (``w=`` is lora-block-weight's
other spelling of ``lbw=``; ``x=`` is the value of ``X`` in the spec).  The host finds tags with the
pattern ``<(\\w+):([^>]+)>`` and splits the inside on every ``:``, so no item can contain ``:``
or ``>``.  Items are kept exactly as written; rewriting one item leaves the others untouched.
The Σ vector is the item after the name unless that item is an option (``te=``, ``unet=``,
``lbw=``/``w=``, ``x=``, ``dyn=``; an item with two ``=`` or more is a vector by component names);
a tag without a vector means Σ = 1.

Axis values (one string per grid cell):

* Σ vector axis: ``[TAG:] VECTOR``.  Values are separated by ``|`` (no quoting needed:
  ``1,0 | 0,1 | 0.5,1``) or, when the text has no ``|``, read as CSV, so vectors with commas
  need double quotes (``"1,0", "0,1"``).  Inside a value, spaces may stand for commas
  (``1 0`` is written into the tag as ``1,0``).
* lbw axis: ``[TAG:] SPEC``, a preset name or a number list, split the same way.
* component weight axis: ``[TAG:]COMPONENT: NUMBERS`` — the component once, in front, then
  numbers and ranges as in the WebUI's number axes (``B: 0, 0.5, 1``, ``B: 0-1 [5]``,
  ``B: 0-1 (+0.25)``; ``0-1 (5)`` also means five values).  COMPONENT is a component's name
  in the join layout or its 1-based position (a name wins over a position).

TAG picks the first tag whose NAME equals it; without it the first ``<ljl>`` tag of the
prompt is rewritten.  Because a tag item cannot contain ``:``, the prefix is unambiguous.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .errors import LoraMergeError
from .sigma import format_sigma, parse_number, parse_sigma, show

TAG_TYPE = "ljl"
TAG_PATTERN = re.compile(r"<(\w+):([^>]+)>")  # the host's extra-network pattern
OPTION_KEYS = ("te", "unet", "lbw", "x", "dyn")
OPTION_ALIASES = {"w": "lbw"}  # lora-block-weight accepts w= for lbw=
VALUE_SEPARATOR = "|"


# --- tags ----------------------------------------------------------------------------------

def option_key(item: str) -> str | None:
    """The key of a `key=value` option item (te, unet, lbw, x, dyn; w= reads as lbw), else None.  An
    item with two `=` or more is a Σ vector by component names (`x=1,face=0`), even when its first
    component is named like an option: option values hold no `=`."""
    if item.count("=") > 1:
        return None
    key, eq, _ = item.partition("=")
    key = OPTION_ALIASES.get(key.strip(), key.strip())
    return key if eq and key in OPTION_KEYS else None


@dataclass(frozen=True)
class LjlTag:
    """One `<ljl:…>` tag: its span in the prompt and its `:`-separated items (name first)."""

    start: int
    end: int
    items: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.items[0].strip()

    @property
    def text(self) -> str:
        return f"<{TAG_TYPE}:" + ":".join(self.items) + ">"

    @property
    def vector(self) -> str | None:
        """The Σ vector as written, or None when the tag has none."""
        if len(self.items) > 1 and option_key(self.items[1]) is None:
            return self.items[1].strip()
        return None

    def option(self, key: str) -> str | None:
        """The value of the option `key` (te, unet, lbw, x, dyn), or None."""
        for item in self.items[1:]:
            if option_key(item) == key:
                return item.partition("=")[2].strip()
        return None

    def with_vector(self, vector: str) -> "LjlTag":
        """The same tag with its Σ vector replaced (or inserted after the name)."""
        check_item(vector, "Σ vector")
        items = list(self.items)
        if self.vector is not None:
            items[1] = vector
        else:
            items.insert(1, vector)
        return replace(self, items=tuple(items))

    def with_option(self, key: str, value: str) -> "LjlTag":
        """The same tag with `key=value` replacing that option, written under any alias (or appended)."""
        check_item(value, key)
        items = list(self.items)
        for i, item in enumerate(items[1:], start=1):
            if option_key(item) == key:
                items[i] = f"{key}={value}"
                break
        else:
            items.append(f"{key}={value}")
        return replace(self, items=tuple(items))


def check_item(value: str, what: str) -> None:
    """LoraMergeError unless `value` can stand as one item inside a tag."""
    if not value or not value.strip():
        raise LoraMergeError(f"{what} is empty")
    if ":" in value or ">" in value or "<" in value:
        raise LoraMergeError(f"{what} '{show(value)}' cannot contain ':', '<' or '>' inside an <ljl:…> tag")


def find_tags(prompt: str) -> list[LjlTag]:
    """Every `<ljl:…>` tag of a prompt, in order."""
    tags = []
    for m in TAG_PATTERN.finditer(prompt or ""):
        if m.group(1) == TAG_TYPE:
            tags.append(LjlTag(m.start(), m.end(), tuple(m.group(2).split(":"))))
    return tags


def pick_tag(prompt: str, name: str | None = None) -> LjlTag:
    """The tag an axis rewrites: the first one named `name`, or the first one; else LoraMergeError."""
    tags = find_tags(prompt)
    if not tags:
        raise LoraMergeError(f"the prompt '{show(prompt or '')}' has no <ljl:NAME:…> tag to vary; "
                             "add one, e.g. <ljl:NAME:1>")
    if name is None:
        return tags[0]
    for tag in tags:
        if tag.name == name:
            return tag
    known = ", ".join(dict.fromkeys(t.name for t in tags))
    raise LoraMergeError(f"the prompt has no <ljl:{show(name)}:…> tag; its <ljl> tags are: {known}")


def has_tag(prompt: str, name: str | None = None) -> bool:
    return any(name is None or t.name == name for t in find_tags(prompt))


def rewrite_prompt(prompt: str, name: str | None, edit: Callable[[LjlTag], LjlTag]) -> str:
    """The prompt with the picked tag (see pick_tag) replaced by `edit(tag)`."""
    tag = pick_tag(prompt, name)
    return prompt[:tag.start] + edit(tag).text + prompt[tag.end:]


# --- splitting axis text -------------------------------------------------------------------

def csv_values(text: str) -> list[str]:
    """Comma-separated values the way the X/Y/Z plot reads them (CSV, double quotes may hold commas)."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    try:
        return [field.strip() for row in rows for field in row]
    except csv.Error as exc:
        raise LoraMergeError(f"axis values '{show(text)}' cannot be read as comma-separated values ({exc})") from None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('""', '"').strip()
    return value


def split_values(text: str) -> list[str]:
    """Axis values: split on `|` when the text has one, else read as CSV; empty values dropped."""
    if VALUE_SEPARATOR in (text or ""):
        values = [_unquote(v) for v in text.split(VALUE_SEPARATOR)]
    else:
        values = csv_values(text)
    return [v for v in values if v]


def normalize_list(text: str) -> str:
    """A number list as the tag expects it: `1 0` and `1, 0` become `1,0`, `2.5 * 8` becomes `2.5*8`.

    Named Σ forms (with `=`) only lose the spaces around commas, since component names may hold spaces.
    """
    text = re.sub(r"\s*([*=])\s*", r"\1", text.strip())
    if "=" in text:
        return re.sub(r"\s*,\s*", ",", text)
    return ",".join(t for t in re.split(r"\s*,\s*|\s+", text))


def split_target(value: str) -> tuple[str | None, str]:
    """(`TAG` or None, rest) of an axis value `[TAG:] rest`."""
    head, colon, rest = value.partition(":")
    if not colon:
        return None, value.strip()
    if not head.strip():
        raise LoraMergeError(f"'{show(value)}' has an empty tag name before ':'")
    return head.strip(), rest.strip()


# --- component weights ----------------------------------------------------------------------

_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUM = rf"[+-]?{_UNSIGNED}"
_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*([+-]?)\s*({_UNSIGNED})\s*\)|\[\s*(\d+)\s*\])?\s*")


def format_weight(value: float) -> str:
    """A weight as a short decimal (at most 8 places, no trailing zeros): 0.25, 1, -0.5."""
    text = f"{round(float(value), 8):.8f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _linspace(start: float, end: float, count: int) -> list[float]:
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


MAX_RANGE_VALUES = 1000


def _stepped(start: float, end: float, step: float, entry: str) -> list[float]:
    if step == 0:
        raise LoraMergeError(f"range '{show(entry)}' has a step of 0")
    span = (end - start) / step
    if span < -1e-9:
        raise LoraMergeError(f"range '{show(entry)}' gives no values (the step goes away from the end)")
    if not span + 1 <= MAX_RANGE_VALUES + 1e-9:  # counted before any list is built (also catches inf)
        raise LoraMergeError(f"range '{show(entry)}' gives more than {MAX_RANGE_VALUES} values")
    return [round(start + i * step, 10) for i in range(int(math.floor(span + 1e-9)) + 1)]


def _finite_range(numbers: Sequence[float], entry: str) -> None:
    if not all(math.isfinite(v) for v in numbers):
        raise LoraMergeError(f"range '{show(entry)}' has a number that is too large")


def expand_numbers(text: str) -> list[float]:
    """Numbers of a number-axis text (separated by `,` or `|`): `0, 0.5, 1`, `0-1` (step 1),
    `0-1 (+0.25)` (step), `0-1 [5]` or `0-1 (5)` (five evenly spaced values, ends included)."""
    out: list[float] = []
    entries = [e.strip() for chunk in split_values(text) for e in chunk.split(",")]
    for entry in filter(None, entries):
        m = _RANGE.fullmatch(entry)
        if m is None:
            out.append(parse_number(entry, "number list"))
            continue
        start, end = float(m.group(1)), float(m.group(2))
        sign, paren, bracket = m.group(3), m.group(4), m.group(5)
        _finite_range([start, end], entry)
        if bracket is not None or (paren is not None and not sign):
            count_text = bracket if bracket is not None else paren
            if not count_text.isdigit() or int(count_text) < 1:
                raise LoraMergeError(f"range '{show(entry)}': a count must be a whole number of at least 1; "
                                     "write (+0.25) for a step")
            count = int(count_text)
            if count > MAX_RANGE_VALUES:
                raise LoraMergeError(f"range '{show(entry)}' asks for {count} values; at most {MAX_RANGE_VALUES}")
            out.extend(round(v, 10) for v in _linspace(start, end, count))
        else:
            step = float(sign + paren) if paren is not None else (1.0 if end >= start else -1.0)
            out.extend(_stepped(start, end, step, entry))
    return out


@dataclass(frozen=True)
class ComponentWeight:
    """One cell of the component-weight axis: set `component` of tag `tag` (None: first) to `weight`."""

    tag: str | None
    component: str
    weight: float

    @property
    def label(self) -> str:
        selector = self.component if self.tag is None else f"{self.tag}:{self.component}"
        return f"{selector}: {format_weight(self.weight)}"


COMPONENT_HINT = "[TAG:]COMPONENT: numbers, e.g. 'B: 0, 0.5, 1' or 'B: 0-1 [5]'"


def _component_selector(head: str, text: str) -> tuple[str | None, str]:
    parts = [p.strip() for p in head.split(":")]
    if len(parts) > 2 or any(not p for p in parts) or any("," in p or "|" in p for p in parts):
        raise LoraMergeError(f"component weight axis '{show(text)}': name the component once, in front "
                             f"({COMPONENT_HINT})")
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def parse_component_axis(text: str) -> list[str]:
    """The cell values of a component-weight axis text, each as ComponentWeight.label
    (`[TAG:]COMPONENT: weight`), which parse_component_value reads back."""
    head, colon, numbers = (text or "").rpartition(":")
    if not colon:
        raise LoraMergeError(f"component weight axis '{show(text or '')}' does not say which component; "
                             f"write {COMPONENT_HINT}")
    tag, component = _component_selector(head, text)
    weights = expand_numbers(numbers)
    if not weights:
        raise LoraMergeError(f"component weight axis '{show(text)}' has no numbers after '{component}:'")
    return [ComponentWeight(tag, component, w).label for w in weights]


def parse_component_value(value: str) -> ComponentWeight:
    """One cell value `[TAG:]COMPONENT: weight`."""
    head, colon, number = str(value).rpartition(":")
    if not colon:
        raise LoraMergeError(f"component weight '{show(str(value))}' does not say which component; "
                             f"write {COMPONENT_HINT}")
    tag, component = _component_selector(head, str(value))
    return ComponentWeight(tag, component, parse_number(number, f"component weight '{show(str(value))}'"))


def resolve_component(layout, selector: str) -> int:
    """Index of a component by name, else by 1-based position; LoraMergeError naming the choices."""
    names = [c.name for c in layout.components]
    if selector in names:
        if names.count(selector) > 1:
            raise LoraMergeError(f"component name '{show(selector)}' is used by several components; "
                                 f"give its position (1-{len(names)}) instead")
        return names.index(selector)
    if selector.isdigit() and 1 <= int(selector) <= len(names):
        return int(selector) - 1
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(names, start=1))
    raise LoraMergeError(f"unknown component '{show(selector)}'; components are {listed}")


def _slices(layout) -> list[tuple[int, int]]:
    out, offset = [], 0
    for comp in layout.components:
        out.append((offset, offset + comp.rank))
        offset += comp.rank
    return out


def format_vector(per_rank: Sequence[float], layout) -> str:
    """A Σ string for a per-rank vector: one number per component when each component is uniform
    (a single number for a one-component LoRA), else one number per rank with `v*n` runs."""
    per_rank = [float(v) for v in per_rank]
    per_comp = []
    for lo, hi in _slices(layout):
        part = per_rank[lo:hi]
        if part and any(v != part[0] for v in part):
            return format_sigma(per_rank)
        per_comp.append(part[0] if part else 0.0)
    return ",".join(format_sigma([v]) for v in per_comp)


def set_component_weight(vector: str | None, layout, index: int, weight: float) -> str:
    """The Σ string `vector` (None means 1) with every rank of component `index` set to `weight`."""
    per_rank = parse_sigma(vector if vector is not None else "1", layout)
    lo, hi = _slices(layout)[index]
    per_rank[lo:hi] = [float(weight)] * (hi - lo)
    return format_vector(per_rank, layout)
