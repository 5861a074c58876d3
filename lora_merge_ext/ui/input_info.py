"""What the tab shows about a LoRA as it is picked: family, rank, alpha, modules, join components."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import LoraMergeError
from ..family import LABELS
from ..layout import layout_or_problem
from ..loading import load_lora
from .markdown_text import literal


@dataclass(frozen=True)
class InputInfo:
    path: str
    family: str
    modules: int
    ranks: tuple[int, ...]          # distinct module ranks, ascending
    alphas: tuple[float | None, ...]  # distinct alphas (None: no alpha, scale 1)
    conv_modules: int
    components: tuple[tuple[str, int], ...]  # (name, rank) of a joined file; one entry for a plain LoRA
    size: int
    layout_problem: str | None = None  # a join layout that no longer fits the tensors: one component then

    @property
    def family_label(self) -> str:
        return LABELS.get(self.family, self.family)

    @property
    def rank_text(self) -> str:
        return _span(self.ranks)

    @property
    def alpha_text(self) -> str:
        if self.alphas == (None,):
            return "none (scale 1)"
        return _span(tuple(a for a in self.alphas if a is not None)) + (" / none" if None in self.alphas else "")

    @property
    def joined(self) -> bool:
        return len(self.components) > 1

    def markdown(self) -> str:
        """One line for the tab: `SD1 · rank 2 · alpha 1 · 64 modules`."""
        parts = [f"**{self.family_label}**", f"rank {self.rank_text}", f"alpha {self.alpha_text}",
                 f"{self.modules} modules" + (f" ({self.conv_modules} conv)" if self.conv_modules else ""),
                 _size_text(self.size)]
        if self.joined:
            parts.append("joined: " + ", ".join(f"{literal(n)} (r{r})" for n, r in self.components))
        if self.layout_problem:
            parts.append(f"⚠ join layout unusable (merged as one component; {literal('<ljl>')} refuses it): "
                         f"{literal(self.layout_problem)}")
        return " · ".join(parts)


def _span(values: tuple) -> str:
    if not values:
        return "-"
    text = [_num(v) for v in values]
    return text[0] if len(text) == 1 else f"{text[0]}–{text[-1]}"


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def size_text(size: int) -> str:
    return _size_text(size)


_CACHE: "OrderedDict[tuple, InputInfo]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def describe(path: str | os.PathLike) -> InputInfo:
    """Read a LoRA file and summarise it (cached by path, size and modification time)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LoraMergeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # by the name too: a link's info names the link (a plain file's component is named after it)
    key = (os.path.abspath(path), os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    lora = load_lora(path)
    layout, layout_problem = layout_or_problem(lora)
    mods = list(lora.modules.values())
    info = InputInfo(
        path=path,
        family=lora.family,
        modules=len(mods),
        ranks=tuple(sorted({m.rank for m in mods})),
        alphas=tuple(sorted({m.alpha for m in mods}, key=lambda a: (a is None, a or 0.0))),
        conv_modules=sum(1 for m in mods if m.is_conv),
        components=tuple((c.name, c.rank) for c in layout.components),
        size=st.st_size,
        layout_problem=layout_problem,
    )
    with _CACHE_LOCK:
        _CACHE[key] = info
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return info


def check_families(infos: list[InputInfo]) -> str:
    """The common family of the inputs; LoraMergeError naming the odd one out when they differ."""
    if not infos:
        raise LoraMergeError("no inputs chosen")
    first = infos[0]
    for info in infos[1:]:
        if info.family != first.family:
            raise LoraMergeError(
                f"cannot merge {first.family_label} and {info.family_label} LoRAs: "
                f"{os.path.basename(first.path)} is {first.family_label}, "
                f"{os.path.basename(info.path)} is {info.family_label}")
    return first.family
