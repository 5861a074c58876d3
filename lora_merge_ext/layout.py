"""The join layout: which ranks of each module belong to which input (component).

A joined module stores its components' ranks side by side, in join order.  A component's
rank is its largest rank over modules; in a module where a component has fewer ranks, the
component's slice of a per-rank Σ vector applies to its first ranks, and the rest of the
slice is unused.  A plain LoRA is one component.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import LoraMergeError

METADATA_KEY = "ljl_layout"


@dataclass
class Component:
    name: str
    rank: int


@dataclass
class JoinLayout:
    components: list[Component]
    module_ranks: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total_rank(self) -> int:
        """Length of a per-rank Σ vector."""
        return sum(c.rank for c in self.components)

    def ranks_of(self, module: str) -> list[int]:
        """Ranks of each component inside one module (0 where a component is absent)."""
        return self.module_ranks.get(module) or [c.rank for c in self.components]

    def module_vector(self, module: str, per_rank: list[float]) -> list[float]:
        """The entries of a per-rank Σ vector that apply to one module's ranks."""
        out: list[float] = []
        offset = 0
        for comp, r in zip(self.components, self.ranks_of(module)):
            out.extend(per_rank[offset:offset + r])
            offset += comp.rank
        return out

    @classmethod
    def single(cls, name: str, module_ranks: dict[str, int]) -> "JoinLayout":
        """Layout of a plain LoRA: one component holding every rank."""
        top = max(module_ranks.values(), default=0)
        return cls([Component(name, top)], {m: [r] for m, r in module_ranks.items() if r != top})

    @classmethod
    def join(cls, parts: list[tuple["JoinLayout", set[str]]]) -> "JoinLayout":
        """Layout of a concat merge of inputs given as (layout, its modules): their components side by
        side, each module's ranks in input order (0 for the components of an input without it)."""
        comps = [c for layout, _ in parts for c in layout.components]
        modules = sorted(set().union(*(names for _, names in parts)))
        default = [c.rank for c in comps]
        per_module = {}
        for m in modules:
            row = [r for layout, names in parts
                   for r in (layout.ranks_of(m) if m in names else [0] * len(layout.components))]
            if row != default:
                per_module[m] = row
        return cls(comps, per_module)

    def to_metadata(self) -> str:
        return json.dumps({
            "version": 1,
            "components": [{"name": c.name, "rank": c.rank} for c in self.components],
            "module_ranks": self.module_ranks,
        }, separators=(",", ":"))

    @classmethod
    def from_metadata(cls, text: str, where: str = "file") -> "JoinLayout":
        try:
            data = json.loads(text)
            comps = [Component(str(c["name"]), int(c["rank"])) for c in data["components"]]
            ranks = {str(m): [int(x) for x in r] for m, r in data.get("module_ranks", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LoraMergeError(f"{where}: metadata '{METADATA_KEY}' is not a valid join layout ({exc})") from None
        tops = [c.rank for c in comps]
        if not comps or min(tops) < 0 or any(
                len(r) != len(comps) or any(not 0 <= x <= top for x, top in zip(r, tops)) for r in ranks.values()):
            raise LoraMergeError(f"{where}: metadata '{METADATA_KEY}' has inconsistent component ranks "
                                 "(a module's rank of a component must lie between 0 and the component's rank)")
        return cls(comps, ranks)

    def check(self, module_ranks: dict[str, int], where: str = "file") -> None:
        """Raise unless every module's rank equals the sum of its components' ranks."""
        for m, r in module_ranks.items():
            if sum(self.ranks_of(m)) != r:
                raise LoraMergeError(
                    f"{where}: join layout says module {m} has rank {sum(self.ranks_of(m))}, the file has {r}")


def layout_of(lora) -> JoinLayout:
    """The join layout of a LoraFile: from its metadata when joined, else a single component."""
    text = lora.metadata.get(METADATA_KEY)
    if not text:
        return _single(lora)
    where = lora.path or "LoRA"
    layout = JoinLayout.from_metadata(text, where)
    layout.check({name: m.rank for name, m in lora.modules.items()}, where)
    return layout


def layout_or_problem(lora) -> tuple[JoinLayout, str | None]:
    """(layout, None), or, for a joined file whose layout no longer fits its tensors (resized or edited
    by another tool), (a single component, why, without the file's name): such a file still merges,
    and <lora> applies it whole."""
    try:
        return layout_of(lora), None
    except LoraMergeError as exc:
        return _single(lora), str(exc).removeprefix(f"{lora.path or 'LoRA'}: ")


def _single(lora) -> JoinLayout:
    """The whole file as one component, named after the file."""
    stem = os.path.splitext(os.path.basename(lora.path))[0] if lora.path else "lora"
    return JoinLayout.single(stem, {name: m.rank for name, m in lora.modules.items()})


def concat_layout(names: list[str], loras: list) -> JoinLayout:
    """The layout of a concat of loras: a plain input is one component, named names[k]; a joined
    input brings its own components, so a join of a join is the join of all their parts and a
    per-rank Σ can still pick each.  Component names are kept apart in order (a, b, a_2, …)."""
    parts, taken = [], []
    for name, lora in zip(names, loras):
        layout, _ = layout_or_problem(lora)  # a layout that no longer fits: the file is one component
        if len(layout.components) == 1:
            layout.components[0].name = name
        for component in layout.components:
            component.name = unique_name(component.name, taken)
            taken.append(component.name)
        parts.append((layout, set(lora.modules)))
    return JoinLayout.join(parts)


def unique_name(base: str, taken: list[str]) -> str:
    """base, or base_2, base_3 … : the first not in taken."""
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name
