"""The tab's events as plain functions: form values in, what to show out (no gradio here).

`tab.py` only maps these results onto gradio components; tests call these directly.
A LoraMergeError never escapes: it becomes the status line the user reads.  Neither does an
unexpected failure of a merge or a bake (out of memory, a host hook): its type and message become
the status line and the traceback goes to the console (gradio alone would only show "Error").
"""
from __future__ import annotations

import html
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import LoraMergeError
from ..layout import Component, JoinLayout
from ..lbw import parse_lbw
from . import tag_builder
from .handlers import MergeRequest, MergeService, SavedOutcome
from .input_info import check_families, describe
from .markdown_text import literal
from .report_plot import error_plot_svg

MAX_INPUTS = 8
MAX_SLIDERS = 8


def error_status(exc: Exception) -> str:
    return f"⚠ {literal(exc)}"


def failure_status(what: str, exc: Exception) -> str:
    """The status line for an unexpected exception; the traceback is printed to the console."""
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = " ".join(str(exc).split())
    message = message if len(message) <= 300 else message[:299] + "…"
    return (f"⚠ {what} failed: {type(exc).__name__}{': ' + literal(message) if message else ''} "
            "(details in the console)")


@dataclass
class SliderView:
    label: str
    visible: bool
    value: float = 1.0


@dataclass
class ResultView:
    """What the result panel and the tag builder show after a merge (or a refusal)."""
    ok: bool
    status: str
    summary: str = ""
    components: str = ""
    plot: str = ""
    state: dict = field(default_factory=dict)
    sliders: list[SliderView] = field(default_factory=list)
    tag: str = ""
    tag_message: str = ""
    bake_name: str = ""
    choices: list[str] = field(default_factory=list)
    subfolders: list[str] = field(default_factory=list)


def result_state(outcome: SavedOutcome) -> dict:
    """The JSON-able state the tab keeps about the last written file (for the tag and the bake)."""
    return {"path": str(outcome.path), "label": outcome.label, "name": tag_builder.tag_name(outcome.path),
            "layout": outcome.layout.to_metadata(), "family": outcome.family}


def state_layout(state: dict | None) -> JoinLayout:
    if not state or not state.get("layout"):
        raise LoraMergeError("no merged file yet: merge first, then build its tag")
    return JoinLayout.from_metadata(state["layout"], state.get("label", "result"))


def plot_html(outcome: SavedOutcome) -> str:
    """The report picture for add and svd ('' for an exact join: its summary line says it is exact)."""
    if outcome.report is None or not outcome.report.rows or outcome.mode == "concat":
        return ""
    title = f"{outcome.mode}: relative error ‖ΔW − T‖/‖T‖ per module"
    return f'<div class="ljl-plot">{error_plot_svg(outcome.report.rows, html.escape(title))}</div>'


def slider_views(layout: JoinLayout) -> list[SliderView]:
    views = [SliderView(f"{c.name} (rank {c.rank})", True, 1.0) for c in layout.components[:MAX_SLIDERS]]
    return views + [SliderView("", False, 1.0) for _ in range(MAX_SLIDERS - len(views))]


def describe_inputs(service: MergeService, labels: Sequence[str | None]) -> tuple[list[str], str]:
    """Info line per input row, and a warning when the chosen inputs cannot be merged together."""
    lines = [service.describe_markdown(label) if label else "" for label in labels]
    try:
        infos = [describe(service.library.path_of(label)) for label in labels if label]
        if len(infos) > 1:
            check_families(infos)
        warning = ""
    except LoraMergeError as exc:
        warning = error_status(exc)
    return lines, warning


def merge(service: MergeService, req: MergeRequest, progress: Callable | None = None,
          tag_lbw: str = "") -> ResultView:
    """Run a merge from the form; on refusal only the status changes.  The new file's tag carries
    tag_lbw, the lbw already set for the tag."""
    try:
        outcome = service.merge(req, progress=progress)
    except LoraMergeError as exc:
        return ResultView(ok=False, status=error_status(exc))
    except Exception as exc:  # noqa: BLE001 - shown to the user instead of gradio's bare "Error"
        return ResultView(ok=False, status=failure_status("the merge", exc))
    state = result_state(outcome)
    sliders = slider_views(outcome.layout)
    text, message = tag(state, [s.value for s in sliders], "", tag_lbw, service.presets_or_none())
    return ResultView(
        ok=True,
        status=f"✔ wrote {literal(outcome.label)}",
        summary=outcome.summary_markdown(),
        components=outcome.components_markdown(),
        plot=plot_html(outcome),
        state=state,
        sliders=sliders,
        tag=text,
        tag_message=message,
        bake_name=f"{state['name']}_baked",
        choices=service.library.labels(),
        subfolders=service.subfolders(),
    )


def open_for_tag(service: MergeService, label: str | None) -> ResultView:
    """Point the tag builder at a file of the Lora folders (a joined one gets a slider per component)."""
    if not label:
        return ResultView(ok=False, status="")
    try:
        path = service.library.path_of(label)
        info = describe(path)
        if info.layout_problem:  # <ljl> and the bake refuse it, as realize does
            raise LoraMergeError(f"<ljl> cannot use this file: {info.layout_problem}")
        layout = JoinLayout([Component(n, r) for n, r in info.components])
        state = {"path": str(path), "label": label, "name": tag_builder.tag_name(path),
                 "layout": layout.to_metadata(), "family": info.family}
        sliders = slider_views(layout)
        text = tag_builder.build_tag(state["name"], layout, [v.value for v in sliders])
    except LoraMergeError as exc:  # e.g. a name a tag cannot hold (':' or '>')
        return ResultView(ok=False, status=error_status(exc))
    return ResultView(ok=True, status="", state=state, sliders=sliders, tag=text, bake_name=f"{state['name']}_baked")


def tag(state: dict | None, sliders: Sequence[float], advanced: str = "", lbw: str = "",
        presets=None) -> tuple[str, str]:
    """(tag text, message): the tag for the current sliders, or '' and why not (an lbw the tag
    would be skipped for, such as an unknown preset, included)."""
    if not state:
        return "", ""
    try:
        layout = state_layout(state)
        text = tag_builder.build_tag(state["name"], layout, sliders, advanced or "", lbw or "")
        if (lbw or "").strip() and state.get("family"):
            parse_lbw(lbw.strip(), state["family"], presets)
        return text, _unslid_note(layout, advanced)
    except LoraMergeError as exc:
        return "", error_status(exc)


def _unslid_note(layout: JoinLayout, advanced: str | None) -> str:
    """Where components go past the sliders (and the advanced field is empty): which stay at 1."""
    rest = layout.components[MAX_SLIDERS:]
    if not rest or (advanced or "").strip():
        return ""
    names = ", ".join(literal(c.name) for c in rest[:4]) + (", …" if len(rest) > 4 else "")
    return (f"ℹ components {MAX_SLIDERS + 1}–{len(layout.components)} ({names}) have no slider and stay at 1: "
            "set them in the advanced Σ field")


def bake(service: MergeService, state: dict | None, sliders: Sequence[float], advanced: str, lbw: str, name: str,
         subfolder: str | None, overwrite: bool, dtype: str) -> ResultView:
    """"Save with Σ": write the last result realised at the current sliders and lbw (subfolder None:
    next to the file it is baked from)."""
    try:
        layout = state_layout(state)
        sigma = tag_builder.sigma_text(layout, sliders, advanced or "")
        if subfolder is None:
            subfolder = service.subfolder_of(state["path"])
        source = state.get("label") or state["path"]  # the label: a listed file link resolves outside the folders
        outcome = service.bake(source, sigma, lbw or "", name, subfolder=subfolder or "",
                               overwrite=bool(overwrite), dtype=dtype or "fp16")
    except LoraMergeError as exc:
        return ResultView(ok=False, status=error_status(exc))
    except Exception as exc:  # noqa: BLE001
        return ResultView(ok=False, status=failure_status("saving with Σ", exc))
    return ResultView(ok=True, status=f"✔ wrote {literal(outcome.label)} (Σ = {literal(sigma)}"
                                      f"{', lbw ' + literal(lbw) if lbw else ''})",
                      summary=outcome.summary_markdown(), choices=service.library.labels(),
                      subfolders=service.subfolders())


def refresh(service: MergeService) -> tuple[list[str], list[str]]:
    """(input choices, sub-folders) after a rescan of the Lora folders."""
    return service.refresh(), service.subfolders()
