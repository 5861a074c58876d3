"""The lbw preset file: one preset per line, ``NAME:v1,v2,…``.

Blank lines and lines starting with ``#`` are ignored.  A name has one form per model family:
17 or 26 values (SD1/SD2) and 12 or 20 values (SDXL); parse_lbw picks the form that fits the
model.  A later line for a name and family replaces the earlier one, as in lora-block-weight's
preset file (so lines added below the shipped ones win).  Bad lines are skipped and described in
``Presets.problems`` (with line numbers); loading never fails because of a bad line.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import LoraMergeError
from .lbw import lbw_values
from .lbw_blocks import FAMILY_LENGTHS
from .shipped_files import shipped_path
from .sigma import show

DEFAULT_PATH = shipped_path("preset.txt")
_BAD_NAME_CHARS = frozenset(",=<>")
_GROUPS = {17: "SD1/SD2", 26: "SD1/SD2", 12: "SDXL", 20: "SDXL"}
_LOADED: dict[Path, tuple[tuple, "Presets"]] = {}  # path → (stat stamp, presets) of the last read


class Presets(dict):
    """name → list of value strings (at most one per family, in file order).

    ``problems``: one line per skipped line; ``skipped``: name → why its line was skipped.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.problems: list[str] = []
        self.skipped: dict[str, str] = {}


def _check_line(line: str) -> tuple[str, str]:
    """(name, values) of a preset line; LoraMergeError saying what is wrong otherwise."""
    name, colon, values = line.partition(":")
    name, values = name.strip(), values.strip()
    if not colon:
        raise LoraMergeError("expected NAME:v1,v2,…")
    if not name or any(c in _BAD_NAME_CHARS or c.isspace() for c in name):
        raise LoraMergeError(f"'{show(name)}' is not a usable preset name (no spaces, commas, '=', '<' or '>')")
    numbers = lbw_values(values, 1.0, f"preset '{show(name)}'")
    group = _GROUPS.get(len(numbers))
    if group is None:
        raise LoraMergeError(f"preset '{show(name)}' has {len(numbers)} values; expected 12, 17, 20 or 26")
    return name, values


def parse_presets(text: str) -> Presets:
    """Presets from the text of a preset file."""
    presets = Presets()
    position: dict[tuple[str, str], int] = {}  # (name, family group) → index of its form in presets[name]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, values = _check_line(line)
        except LoraMergeError as exc:
            problem = f"line {number}: {exc}"
            presets.problems.append(problem)
            presets.skipped.setdefault(line.partition(":")[0].strip(), problem)
            continue
        forms = presets.setdefault(name, [])
        index = position.setdefault((name, _GROUPS[values.count(",") + 1]), len(forms))
        if index == len(forms):
            forms.append(values)
        else:
            forms[index] = values
    return presets


def load_presets(path: str | Path | None = None) -> Presets:
    """Read a preset file (default: the shipped preset.txt, at the project root in a checkout).  The
    file is parsed again only when it changed since the last call (callers read it at every use, so
    that an edit applies without a restart); treat the result as read-only."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = _LOADED.get(path)
        if known and known[0] == stamp:
            return known[1]
        data = path.read_bytes()
    except OSError as exc:
        raise LoraMergeError(f"{path}: cannot read the preset file ({exc.strerror or exc})") from None
    presets = parse_presets(data.decode("utf-8-sig", errors="replace"))  # -sig: editors on Windows write a BOM
    _LOADED[path] = (stamp, presets)
    return presets


def as_presets(value) -> Presets | None:
    """The presets a caller gave: None (preset.txt), a preset file's path, or a mapping of name to
    values ("1,0,…", or a list of such strings, one per family).  Mapping entries are checked as a
    preset file's lines are."""
    if value is None or isinstance(value, Presets):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_presets(value)
    if not isinstance(value, dict):
        raise LoraMergeError(f"presets {show(repr(value))}: expected a preset file's path or a mapping of "
                             "name to values")
    lines = []
    for name, forms in value.items():
        forms = [forms] if isinstance(forms, str) else forms
        if not isinstance(name, str) or not isinstance(forms, (list, tuple)) or \
                not all(isinstance(f, str) for f in forms):
            raise LoraMergeError(f"preset {show(repr(name))}: expected a name and a string of values "
                                 "(or a list of them)")
        groups = [_GROUPS.get(form.count(",") + 1) for form in forms]
        twice = next((g for g in groups if g is not None and groups.count(g) > 1), None)
        if twice:
            raise LoraMergeError(f"preset {show(repr(name))}: two {twice} forms; give at most one per family")
        lines += [f"{name}:{form}" for form in forms]
    presets = parse_presets("\n".join(lines))
    if presets.problems:
        raise LoraMergeError(f"presets: {presets.problems[0]}")
    return presets


def preset_names(presets: dict, family: str | None = None) -> list[str]:
    """Preset names in file order; with a family, only those with a form that fits it."""
    if family is None:
        return list(presets)
    if family not in FAMILY_LENGTHS:
        raise LoraMergeError(f"unknown model family '{show(str(family))}'; expected one of {', '.join(FAMILY_LENGTHS)}")
    lengths = FAMILY_LENGTHS[family]
    return [name for name, forms in presets.items() if any(f.count(",") + 1 in lengths for f in forms)]

