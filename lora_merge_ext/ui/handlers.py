"""What the merge tab and the HTTP route do, as plain functions (no gradio here, so tests call them).

`MergeService` holds the Lora folders and the host hooks: `serialize` wraps the heavy part (the
WebUI passes its queue lock, so a merge never runs beside a generation) and `on_written` is called
with each new file (the WebUI rescans its Lora list).  Merges run in the caller's thread (a concat
is streamed into its file, so the joined LoRA is never held in the WebUI's memory); writes of one
name (in any folder) are serialised, and a file is never written without the overwrite and
free-name rules being checked at that moment, so two merges started at once cannot corrupt each
other's output or give two files one name.
"""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import api
from ..errors import LoraMergeError
from ..family import LABELS
from ..layout import JoinLayout, layout_of
from ..lazy_lora import open_lazy
from ..loading import load_lora
from ..merge import canonical_mode
from ..merge_report import MergeReport
from ..safetensors_header import show
from . import names
from .host_names import files_answering_to
from .input_info import InputInfo, check_families, describe, size_text
from .library import LoraLibrary
from .markdown_text import code, literal
from .numbers import number_or_none
from .output_folders import folder_for_write

MIN_INPUTS = 2
DTYPES = ("fp16", "bf16", "fp32")
Progress = Callable[[int, int, str], None]

_NAME_LOCKS: dict[str, threading.Lock] = {}
_NAME_LOCKS_GUARD = threading.Lock()


def _name_lock(path: Path) -> threading.Lock:
    """One lock per name a file answers to in the WebUI (its stem, whatever its folder): two writes
    of one name, even into different sub-folders, take turns, so the second sees the first's file."""
    key = Path(path).stem.casefold()
    with _NAME_LOCKS_GUARD:
        return _NAME_LOCKS.setdefault(key, threading.Lock())


@dataclass
class MergeRequest:
    """Everything the tab (or the HTTP route) asks for; inputs are labels or paths in the Lora folders."""
    inputs: list[str]
    name: str
    mode: str = "concat"
    weights: list[float] | None = None
    lbw: list[str] | None = None
    rank: int | None = None
    conv_rank: int | None = None
    energy: float | None = None
    dtype: str = "fp16"
    device: str = "cpu"
    subfolder: str = ""
    overwrite: bool = False
    measure: bool = False  # also measure a concat's round-off (add and svd are always measured)


@dataclass
class SavedOutcome:
    """A file the tab wrote, with what the result panel shows."""
    path: Path
    label: str
    size: int
    sha256: str
    family: str
    mode: str
    modules: int
    ranks: tuple[int, ...]
    layout: JoinLayout
    report: MergeReport | None = None
    inputs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rank_text(self) -> str:
        if not self.ranks:
            return "-"
        return str(self.ranks[0]) if len(self.ranks) == 1 else f"{self.ranks[0]}–{self.ranks[-1]}"

    @property
    def joined(self) -> bool:
        return len(self.layout.components) > 1

    def summary_markdown(self) -> str:
        lines = [f"**Saved** {code(self.label)} · {size_text(self.size)} · {LABELS.get(self.family, self.family)} · "
                 f"{self.mode} · rank {self.rank_text} · {self.modules} modules",
                 f"sha256 `{self.sha256}`"]
        if self.report is not None and self.report.rows:
            s = self.report.summary()
            if self.mode == "concat" and not self.report.measured:
                lines.append("Exact join: ΔW is the weighted sum of the inputs' ΔW, up to the rounding of the "
                             "saved factors (not measured).")
            elif self.mode == "concat":
                lines.append(f"Exact join: largest relative error {s['max_error']:.2g} "
                             "(the rounding of the saved factors).")
            else:
                worst = f" (worst: {code(s['worst'][0][0])})" if s["worst"] else ""
                lines.append(f"Relative error ‖ΔW − T‖/‖T‖: mean {s['mean_error']:.3g}, "
                             f"max {s['max_error']:.3g}{worst}")
        return "  \n".join(lines)

    def components_markdown(self) -> str:
        if not self.joined:
            return ""
        rows = ["| # | component | rank |", "|---|---|---|"]
        rows += [f"| {i + 1} | {literal(c.name)} | {c.rank} |" for i, c in enumerate(self.layout.components)]
        return "\n".join(rows)

    def as_json(self) -> dict:
        out = {"path": str(self.path), "file": self.label, "size": self.size, "sha256": self.sha256,
               "family": self.family, "mode": self.mode, "modules": self.modules, "ranks": list(self.ranks),
               "components": [{"name": c.name, "rank": c.rank} for c in self.layout.components]}
        if self.report is not None and not self.report.measured:
            out["report"] = {"measured": False, "rows": [{"module": r.module, "rank": r.rank}
                                                         for r in self.report.rows]}
        elif self.report is not None:
            s = self.report.summary()
            out["report"] = {"measured": True, "mean_error": _finite(s["mean_error"]),
                             "max_error": _finite(s["max_error"]),
                             "worst": [{"module": m, "rank": r, "error": _finite(e)} for m, r, e in s["worst"]],
                             "rows": [{"module": r.module, "rank": r.rank, "error": _finite(r.error)}
                                      for r in self.report.rows]}
        return out


def _finite(x: float):
    return x if math.isfinite(x) else None


def _weight(value, label: str) -> float:
    """An input's weight; an empty box is refused rather than read as 1."""
    number = number_or_none(value, f"weight of {show(label, 80)!r}")
    if number is None:
        raise LoraMergeError(f"the weight of {show(label, 80)!r} is empty: enter a number")
    return number


def _check_dtype(dtype) -> None:
    if (dtype or "fp16").lower() not in DTYPES:
        raise LoraMergeError(f"dtype '{show(str(dtype), 40)}' is not one of {', '.join(DTYPES)}")


class MergeService:
    """The tab's and the route's operations over one set of Lora folders."""

    def __init__(self, library: LoraLibrary, *, presets=None, serialize: Callable | None = None,
                 on_written: Callable[[Path], None] | None = None):
        self.library = library
        self.presets = presets  # None: preset.txt as it is at each use (edits apply without a restart)
        self.serialize = serialize or (lambda fn: fn)
        self.on_written = on_written

    # --- listing ------------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Rescan the Lora folders; the labels to offer."""
        return self.library.refresh()

    def subfolders(self) -> list[str]:
        return self.library.subfolders()

    def subfolder_of(self, path: str | os.PathLike) -> str:
        """The sub-folder of the output folder a file lies in ("" for the folder itself, or for a file
        elsewhere or deeper): where a file baked from it goes, next to it."""
        try:
            relative = Path(path).resolve().relative_to(self.library.output_dir.resolve())
        except ValueError:
            return ""
        return relative.parts[0] if len(relative.parts) == 2 else ""

    def describe(self, label: str) -> InputInfo:
        return describe(self.library.path_of(label))

    def describe_markdown(self, label: str) -> str:
        """The info line under an input row ('' for an empty row, the error text for a bad file)."""
        if not label or not str(label).strip():
            return ""
        try:
            return self.describe(label).markdown()
        except LoraMergeError as exc:
            return f"⚠ {literal(exc)}"

    # --- merging -------------------------------------------------------------------------------
    def check_request(self, req: MergeRequest) -> tuple[list[Path], list[float], list[str] | None, Path]:
        """Validate everything that can be checked before merging; returns (paths, weights, lbw, output path)."""
        mode = canonical_mode(req.mode or "concat")
        rows = [(i, str(x).strip()) for i, x in enumerate(req.inputs or []) if x is not None and str(x).strip()]
        minimum = 1 if mode == "svd" else MIN_INPUTS
        if len(rows) < minimum:
            raise LoraMergeError(f"{mode} needs at least {minimum} input LoRAs, {len(rows)} chosen")
        paths = [self.library.path_of(label) for _, label in rows]
        seen: dict[str, str] = {}
        for (_, label), path in zip(rows, paths):
            key = os.path.normcase(str(path.resolve()))
            if key in seen:
                raise LoraMergeError(f"'{label}' is chosen twice; pick each input once (use a weight to scale it)")
            seen[key] = label
        infos = [describe(p) for p in paths]
        check_families(infos)
        weights = [_weight(w, label) for w, (_, label) in
                   zip(self._per_input(req.weights, rows, len(req.inputs), "weight", 1.0), rows)]
        lbw = [str(s or "").strip() for s in self._per_input(req.lbw, rows, len(req.inputs), "lbw", "")]
        lbw_list = lbw if any(lbw) else None
        _check_dtype(req.dtype)
        out = names.output_path(self.library.output_dir, req.name, req.subfolder, overwrite=bool(req.overwrite),
                                inputs=paths)
        self._check_name_is_free(out)
        return paths, weights, lbw_list, out

    @staticmethod
    def _per_input(values, rows, row_count: int, what: str, default):
        """Values given per chosen input, or per row of the form (aligned with req.inputs, empty rows
        included: row_count of them); any other count is refused."""
        if values is None:
            return [default] * len(rows)
        values = list(values)
        if len(values) == len(rows):
            return values
        if len(values) == row_count:
            return [values[i] for i, _ in rows]
        raise LoraMergeError(f"got {len(values)} {what} values for {len(rows)} inputs")

    def merge(self, req: MergeRequest, progress: Progress | None = None) -> SavedOutcome:
        """Merge the chosen inputs and write the result into the Lora folder."""
        paths, weights, lbw, out = self.check_request(req)
        mode = canonical_mode(req.mode)
        svd = mode == "svd"
        rank = number_or_none(req.rank, "rank", integer=True) if svd else None
        conv_rank = number_or_none(req.conv_rank, "conv rank", integer=True) if svd else None
        energy = number_or_none(req.energy, "energy") if svd else None

        def work() -> SavedOutcome:
            with self._writing(out, req, paths):
                saved, report = api.merge_to_file(
                    [str(p) for p in paths], out, mode=mode, weights=weights, lbw=lbw, rank=rank,
                    conv_rank=conv_rank, energy=energy, device=req.device or "cpu", progress=progress,
                    presets=self._presets() if lbw else None, report=True if req.measure else None,
                    dtype=(req.dtype or "fp16").lower(),
                    overwrite=bool(req.overwrite))  # the inputs are protected from being written over
            self._written(out)
            return self._outcome(saved, _written_lora(out), mode, report, paths)

        return self.serialize(work)()

    def bake(self, source: str | os.PathLike, sigma: str, lbw: str, name: str, *, subfolder: str = "",
             overwrite: bool = False, dtype: str = "fp16") -> SavedOutcome:
        """"Save with Σ": realize a (joined) file at the current Σ and lbw into a plain LoRA."""
        src = self.library.path_of(str(source))
        req = MergeRequest(inputs=[str(src)], name=name, dtype=dtype, subfolder=subfolder, overwrite=overwrite)
        _check_dtype(dtype)
        out = names.output_path(self.library.output_dir, name, subfolder, overwrite=overwrite, inputs=[src])
        self._check_name_is_free(out)

        def work() -> SavedOutcome:
            lora = load_lora(src)
            baked = api.realize(lora, sigma, lbw=(lbw or "").strip() or None, presets=self._presets())
            if not baked.modules:
                raise LoraMergeError(f"Σ '{sigma}' switches every rank off: the baked LoRA would be empty")
            with self._writing(out, req, [src]):
                saved = api.save(baked, out, dtype=(req.dtype or "fp16").lower(), overwrite=bool(req.overwrite),
                                 protect=[str(src)])
            baked.path = str(out)  # after writing: save() protects a LoraFile's own path
            self._written(out)
            return self._outcome(saved, baked, "realize", None, [src])

        return self.serialize(work)()

    # --- helpers -------------------------------------------------------------------------------
    def _check_name_is_free(self, out: Path) -> None:
        """Refuse an output name that another file of the Lora folders answers to (its file name, in
        any sub-folder or folder, or its alias): the WebUI would find only one of the two for both
        names' tags, and an input picked earlier in the lists could silently mean the new file."""
        for other, how in files_answering_to(out.stem, self.library.folders):
            if names.same_file(other, out):
                continue  # the file being replaced
            root = next((r for r in self.library.folders if r in other.parents), other.parent)
            raise LoraMergeError(f"'{out.stem}' is already the {how} of {other.relative_to(root).as_posix()} "
                                 f"in {root} (the WebUI finds a LoRA by file name or alias, whatever its "
                                 "sub-folder); choose another name")

    def presets_or_none(self):
        """The lbw presets, or None when the preset file cannot be read (the tab then offers free text only)."""
        try:
            return self._presets()
        except LoraMergeError:
            return None

    def _presets(self):
        if self.presets is not None:
            return self.presets
        from ..presets import load_presets
        return load_presets()

    @contextmanager
    def _writing(self, out: Path, req: MergeRequest, inputs: Sequence[Path]):
        """Hold the name's lock while out is written, with the overwrite rule and the free-name rule
        checked again at that moment (another merge may have written that name meanwhile, in this
        folder or another), and its folders created (and removed again if writing fails, unless
        another write into them is under way)."""
        with _name_lock(out):
            names.output_path(self.library.output_dir, out.name, req.subfolder, overwrite=bool(req.overwrite),
                              inputs=inputs)
            self._check_name_is_free(out)
            with folder_for_write(out.parent):
                yield

    def _outcome(self, saved: api.SavedFile, lora, mode: str, report, inputs: Sequence[Path]) -> SavedOutcome:
        path = Path(lora.path)
        label = path.relative_to(self.library.output_dir).as_posix()
        return SavedOutcome(path=path, label=label, size=saved.size, sha256=saved.sha256, family=lora.family,
                            mode=mode, modules=len(lora.modules),
                            ranks=tuple(sorted({m.rank for m in lora.modules.values()})),
                            layout=layout_of(lora), report=report, inputs=[str(p) for p in inputs])

    def _written(self, path: Path) -> None:
        """Rescan the folders and tell the host (inside serialize: the host may touch its model)."""
        self.library.refresh()
        if self.on_written is not None:
            self.on_written(path)


def _written_lora(path: Path):
    """What the outcome shows of a file just written (family, modules, ranks, join layout), read
    from its header."""
    lora = open_lazy(path)
    if lora is None:
        return load_lora(path)
    lora.close()
    return lora
