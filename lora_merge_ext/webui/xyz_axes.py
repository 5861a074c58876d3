"""X/Y/Z plot axes over a joined LoRA's Σ vector, one component's weight and the lbw string.

Each axis rewrites one ``<ljl:…>`` tag of the cell's prompt (so the host's conditioning cache,
keyed on the tag text, sees the change) and checks every value before the grid starts: the
prompt must have the tag, the LoRA must be found and read, vectors must fit the file, presets
must exist in preset.txt.  Value syntax is in ``lora_merge_ext.ljl_tag``; the labels carry a
short hint.

The host applies a cell's axes in the order x, y, z, and an axis of its own (Prompt S/R) may
rename the tag after ours.  So an axis only queues its edit on the cell; ``finish_edits`` (the
script's ``before_process`` hook) applies them to the final prompt, Σ vectors first, then lbw,
then component weights, which therefore apply on top of a Σ vector whatever the axes' order and
to the components of the file the tag finally names.

``register_axes()`` adds the axes to the loaded ``xyz_grid.py`` module once (guarded by label);
the entry script calls it at import time (so ``--nowebui`` API mode, whose script ``ui()`` runs
before ``before_ui``, sees them) and again from ``before_ui`` (after a UI reload the plot
script is a fresh module).  WebUI modules are imported only inside functions.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from .. import ljl_tag
from ..errors import LoraMergeError
from ..sigma import parse_sigma, show

SIGMA_AXIS = "LJL Σ vector"
COMPONENT_AXIS = "LJL component weight"
LBW_AXIS = "LJL lbw"

SIGMA_LABEL = f'{SIGMA_AXIS} ([TAG:] 1,0 | 0,1 or "1,0", "0,1")'
COMPONENT_LABEL = f"{COMPONENT_AXIS} ([TAG:]COMPONENT: 0, 0.5, 1 or 0-1 [5])"
LBW_LABEL = f'{LBW_AXIS} ([TAG:] PRESET | 1,0,… or "1,0,…")'

AXIS_HINTS = {
    SIGMA_LABEL: "One Σ vector per cell. Separate vectors with | (no quotes needed: 1,0 | 0,1 | 0.5 1), "
                 "or write CSV with each vector in double quotes (\"1,0\", \"0,1\"). "
                 "Start a value with NAME: to vary <ljl:NAME:…> instead of the first <ljl> tag.",
    COMPONENT_LABEL: "Name the component once, then numbers: B: 0, 0.5, 1 or B: 0-1 [5] (five values), "
                     "B: 0-1 (+0.25) (step). COMPONENT is a name from the join or its position (1, 2, …). "
                     "NAME:B: … varies <ljl:NAME:…> instead of the first <ljl> tag.",
    LBW_LABEL: "Preset names from preset.txt (pick from the list), or, with 'Use text inputs instead of "
               "dropdowns', number lists separated by | or double-quoted CSV. NAME: picks the <ljl> tag.",
}

COST = 0.4  # re-merging the LoRA is slower than a seed change, far cheaper than a checkpoint


# --- finding the LoRA a tag names ------------------------------------------------------------

def lora_info(name: str):
    """(layout, family for lbw) of the LoRA a tag names, found and read the way the ``<ljl>``
    runtime does it: the same name lookup, the same file cache (a file confirmed here is not read
    again by the first cell), and lbw checked against the loaded model's family."""
    from ..layout import layout_of
    from . import activation, lookup
    cached = activation.state().files.get(lookup.lora_path(name))
    try:
        from modules import shared
        sd_model = shared.sd_model
    except ImportError:
        sd_model = None
    return layout_of(cached.lora), activation.model_family(sd_model, cached.lora.family)


# --- prompt rewriting ---------------------------------------------------------------------

def _prompt_text(p) -> str:
    prompt = getattr(p, "prompt", "")
    if isinstance(prompt, (list, tuple)):
        return prompt[0] if prompt else ""
    return prompt or ""


def _rewrite(text, name, edit, required):
    if isinstance(text, (list, tuple)):
        out = [_rewrite(t, name, edit, False) for t in text]
        if required and not any(ljl_tag.has_tag(t, name) for t in text):
            ljl_tag.pick_tag(_first_text(text), name)  # raises: no such tag
        return out
    if isinstance(text, str) and (required or ljl_tag.has_tag(text, name)):
        return ljl_tag.rewrite_prompt(text, name, edit)
    return text


def _first_text(texts) -> str:
    """The first prompt of a list (for messages)."""
    return next((t for t in texts if isinstance(t, str)), "")


def _first_tag_name(prompt) -> str:
    """The name of the first `<ljl>` tag of the prompt (of the first prompt holding one, for a list)."""
    texts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
    for text in texts:
        if isinstance(text, str) and ljl_tag.has_tag(text):
            return ljl_tag.pick_tag(text).name
    return ljl_tag.pick_tag(_first_text(texts)).name  # raises: no tag


def rewrite_processing(p, name: str | None, edit) -> None:
    """Apply `edit` to the picked tag of p.prompt, and to the tag of the same name in p.hr_prompt
    where that has one (a value without NAME: picks the prompt's first tag; the hires prompt may
    hold other LoRAs, or list them in another order)."""
    if name is None:
        name = _first_tag_name(p.prompt)
    p.prompt = _rewrite(p.prompt, name, edit, True)
    if getattr(p, "hr_prompt", None):
        p.hr_prompt = _rewrite(p.hr_prompt, name, edit, False)


@dataclass(frozen=True)
class QueuedEdit:
    """One axis value waiting for the cell's final prompt."""
    order: int  # Σ 0, lbw 1, component 2
    axis: str
    value: str
    name: str | None  # the tag a value names, None for the prompt's first tag
    edit: Callable


def _queue(p, order: int, axis: str, value: str, name: str | None, edit: Callable) -> None:
    # a new list: the host's cell is a shallow copy of the plot's p
    p.ljl_xyz_edits = [*getattr(p, "ljl_xyz_edits", ()), QueuedEdit(order, axis, value, name, edit)]


def finish_edits(p) -> list[str]:
    """Apply the edits the axes queued on p to its prompt and hires prompt (Σ, then lbw, then
    component weights; in axis order within each kind) and clear them.  An edit that no longer fits
    (its tag was renamed away, its component is not in the file the tag now names) is left out;
    returns one message for each."""
    edits = sorted(getattr(p, "ljl_xyz_edits", None) or (), key=lambda e: e.order)
    if not edits:
        return []
    p.ljl_xyz_edits = []
    problems = []
    for queued in edits:
        try:
            rewrite_processing(p, queued.name, queued.edit)
        except LoraMergeError as exc:
            problems.append(f"{_fail(queued.axis, queued.value, exc)}; this image is made without it")
    return problems


def _fail(axis: str, value, exc: Exception) -> LoraMergeError:
    where = f" value '{show(str(value))}'" if value is not None else ""
    return LoraMergeError(f"{axis}{where}: {exc}")


def _tag(p, axis: str, name: str | None, value):
    try:
        return ljl_tag.pick_tag(_prompt_text(p), name)
    except LoraMergeError as exc:
        raise _fail(axis, value if name else None, exc) from None


def _info(axis: str, tag):
    try:
        return lora_info(tag.name)
    except LoraMergeError as exc:
        raise _fail(axis, None, exc) from None


# --- Σ vector axis ----------------------------------------------------------------------

def sigma_value(value: str) -> tuple[str | None, str]:
    """(tag name or None, Σ string for the tag) of one Σ-axis value."""
    name, vector = ljl_tag.split_target(value)
    return name, ljl_tag.normalize_list(vector)


def apply_sigma(p, x, xs):
    name, vector = sigma_value(x)

    def edit(tag):
        parse_sigma(vector, lora_info(tag.name)[0])  # the tag may name another file by now (Prompt S/R)
        return tag.with_vector(vector)

    _queue(p, 0, SIGMA_AXIS, x, name, edit)


def confirm_sigma(p, xs):
    if not xs:
        raise LoraMergeError(f"{SIGMA_AXIS}: no values; {AXIS_HINTS[SIGMA_LABEL]}")
    for value in xs:
        try:
            name, vector = sigma_value(value)
            ljl_tag.check_item(vector, "Σ vector")
        except LoraMergeError as exc:
            raise _fail(SIGMA_AXIS, value, exc) from None
        layout, _ = _info(SIGMA_AXIS, _tag(p, SIGMA_AXIS, name, value))
        try:
            parse_sigma(vector, layout)
        except LoraMergeError as exc:
            raise _fail(SIGMA_AXIS, value, exc) from None


# --- component weight axis ----------------------------------------------------------------

def apply_component(p, x, xs):
    cw = ljl_tag.parse_component_value(x)

    def edit(tag):
        layout, _ = lora_info(tag.name)
        index = ljl_tag.resolve_component(layout, cw.component)
        return tag.with_vector(ljl_tag.set_component_weight(tag.vector, layout, index, cw.weight))

    _queue(p, 2, COMPONENT_AXIS, x, cw.tag, edit)


def prepare_component(text: str) -> list[str]:
    try:
        return ljl_tag.parse_component_axis(text)
    except LoraMergeError as exc:
        raise _fail(COMPONENT_AXIS, None, exc) from None


def confirm_component(p, xs):
    if not xs:
        raise LoraMergeError(f"{COMPONENT_AXIS}: no values; {AXIS_HINTS[COMPONENT_LABEL]}")
    for value in xs:
        try:
            cw = ljl_tag.parse_component_value(value)
        except LoraMergeError as exc:
            raise _fail(COMPONENT_AXIS, value, exc) from None
        tag = _tag(p, COMPONENT_AXIS, cw.tag, value)
        layout, _ = _info(COMPONENT_AXIS, tag)
        try:
            ljl_tag.resolve_component(layout, cw.component)
            parse_sigma(tag.vector if tag.vector is not None else "1", layout)
        except LoraMergeError as exc:
            raise _fail(COMPONENT_AXIS, value, exc) from None


# --- lbw axis -------------------------------------------------------------------------------

def lbw_value(value: str) -> tuple[str | None, str]:
    """(tag name or None, lbw spec for the tag) of one lbw-axis value."""
    name, spec = ljl_tag.split_target(value)
    return name, ljl_tag.normalize_list(spec)


def apply_lbw(p, x, xs):
    name, spec = lbw_value(x)

    def edit(tag):
        _check_lbw(spec, lora_info(tag.name)[1])  # the tag may name another file by now (Prompt S/R)
        return tag.with_option("lbw", spec)

    _queue(p, 1, LBW_AXIS, x, name, edit)


def _check_lbw(spec: str, family: str, presets: list | None = None) -> None:
    """Raise LoraMergeError unless spec is a block-weight string for family; presets: a list that
    holds preset.txt once read (read only for a preset name)."""
    from ..lbw import parse_lbw
    from ..presets import load_presets
    presets = [] if presets is None else presets
    if "," not in spec and not presets:
        presets.append(load_presets())
    parse_lbw(spec, family, presets[0] if presets else None)


def lbw_choices() -> list[str]:
    """Preset names from preset.txt that fit the loaded model's family (all of them with no model),
    for the axis dropdown (empty when the file cannot be read)."""
    from ..presets import load_presets, preset_names
    from .activation import model_family
    try:
        from modules import shared
        sd_model = getattr(shared, "sd_model", None)
        return preset_names(load_presets(), model_family(sd_model, None) if sd_model is not None else None)
    except LoraMergeError:
        return []


def confirm_lbw(p, xs):
    if not xs:
        raise LoraMergeError(f"{LBW_AXIS}: no values; {AXIS_HINTS[LBW_LABEL]}")
    presets = []  # read preset.txt once, and only when a value is a name
    for value in xs:
        try:
            name, spec = lbw_value(value)
            ljl_tag.check_item(spec, "lbw")
        except LoraMergeError as exc:
            raise _fail(LBW_AXIS, value, exc) from None
        _, family = _info(LBW_AXIS, _tag(p, LBW_AXIS, name, value))
        try:
            _check_lbw(spec, family, presets)
        except LoraMergeError as exc:
            raise _fail(LBW_AXIS, value, exc) from None


# --- labels and registration -------------------------------------------------------------------

def format_as_typed(p, opt, x) -> str:
    """Grid label: the value as the user typed it (component weights: `COMPONENT: weight`)."""
    return str(x)


def axis_definitions() -> list[dict]:
    """Keyword arguments of the three AxisOption entries (same for txt2img and img2img)."""
    return [
        dict(label=SIGMA_LABEL, type=str, apply=apply_sigma, format_value=format_as_typed,
             confirm=confirm_sigma, cost=COST, prepare=ljl_tag.split_values),
        dict(label=COMPONENT_LABEL, type=str, apply=apply_component, format_value=format_as_typed,
             confirm=confirm_component, cost=COST, prepare=prepare_component),
        dict(label=LBW_LABEL, type=str, apply=apply_lbw, format_value=format_as_typed,
             confirm=confirm_lbw, cost=COST, choices=lbw_choices, prepare=ljl_tag.split_values),
    ]


def find_xyz_grid():
    """The loaded ``xyz_grid.py`` script module, or None when the plot script is not loaded
    (or when this runs outside the WebUI)."""
    try:
        from modules import scripts
    except ImportError:
        return None
    for entry in scripts.scripts_data:
        if getattr(entry.script_class, "__module__", None) == "xyz_grid.py":
            return entry.module
    return None


def register_axes() -> int:
    """Add the LJL axes for txt2img and img2img to the X/Y/Z plot once; returns how many were added.

    Safe to call any number of times: an axis whose label is already there is skipped.  Never
    raises: without the plot script (or outside the WebUI) nothing is added.
    """
    try:
        xyz = find_xyz_grid()
        if xyz is None:
            return 0
        present = {(o.label, getattr(o, "is_img2img", None)) for o in xyz.axis_options}
        added = 0
        for cls, is_img2img in ((xyz.AxisOptionTxt2Img, False), (xyz.AxisOptionImg2Img, True)):
            for kwargs in axis_definitions():
                if (kwargs["label"], is_img2img) in present:
                    continue
                xyz.axis_options.append(cls(**kwargs))
                added += 1
        return added
    except Exception as exc:  # a broken plot script must not stop the extension from loading
        print(f"lora_merge_ext: could not add the X/Y/Z plot axes: {exc}", file=sys.stderr)
        return 0
