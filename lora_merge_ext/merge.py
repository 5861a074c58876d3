"""Merge LoRAs module by module: concat (exact join), add (classic factor sum) and svd (best rank N)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import torch

from .bundled import joined_embeddings
from .devices import resolve_device
from .errors import LoraMergeError
from .factor_arena import FactorArena
from .factor_math import add_parts, concat_parts, concat_round_off, relative_error, stacked, svd_parts
from .family import LABELS
from .layout import METADATA_KEY, concat_layout
from .lazy_lora import FactorSource, LazyModule
from .lbw import lbw_factor, parse_lbw
from .lora_file import LoraFile, LoraModule
from .merge_report import MergeReport, ReportRow
from .pointwise import widen_flat_modules
from .safetensors_header import show
from .workers import map_in_workers, worker_count

MODES = {"concat": "concat", "join": "concat", "ljl": "concat", "add": "add", "svd": "svd"}
MAX_OUTPUT_ELEMENTS = 2 ** 31  # 8 GiB of float32: far above any real LoRA
Progress = Callable[[int, int, str], None]


@dataclass
class MergeResult:
    lora: LoraFile
    report: MergeReport
    rank: int | None = None  # the ranks an svd merge aimed at (its defaults filled in)
    conv_rank: int | None = None


def canonical_mode(mode: str) -> str:
    try:
        return MODES[mode.lower()]
    except (KeyError, AttributeError):
        raise LoraMergeError(f"mode {show(repr(mode), 60)} is not one of concat, join, ljl, add, svd") from None


def merge_loras(loras: list[LoraFile], names: list[str], *, mode: str = "concat", weights: list[float] | None = None,
                lbw: list[str | None] | None = None, rank: int | None = None, conv_rank: int | None = None,
                energy: float | None = None, device: str = "cpu", presets=None,
                progress: Progress | None = None, report: bool | None = None,
                dtype: torch.dtype = torch.float32) -> MergeResult:
    """Merge LoraFiles; the result's ΔW follows DESIGN.md §3 for the mode.  Metadata is left to the caller
    except the join layout.  report: measure ‖ΔW_out − T‖/‖T‖ per module (default: for add and svd; a
    concat is exact by construction, so it is only measured when asked).  Computation is float32; each
    output module is rounded to dtype (the dtype it will be saved in) as soon as it is computed, and
    the report measures the rounded factors."""
    mode = canonical_mode(mode)
    measure = mode != "concat" if report is None else report
    loras = widen_flat_modules(loras)
    plan = check_inputs(loras, names, mode, weights, lbw, rank, conv_rank, energy, presets)
    weights, family, factors, rank, conv_rank, order = (plan.weights, plan.family, plan.factors, plan.rank,
                                                        plan.conv_rank, plan.order)
    dev = resolve_device(device)
    arena = _concat_arena(order, loras, dtype) if mode == "concat" and dev.type == "cpu" else None
    if arena:
        arena.start_hash()

    def merge_module(name: str) -> tuple[LoraModule, ReportRow]:
        present = [(k, lora.modules[name]) for k, lora in enumerate(loras) if name in lora.modules]
        parts = [(m.up2d(None).to(dev), m.down2d(None).to(dev), plan.coefficient(k, name, m)) for k, m in present]
        first = present[0][1]
        joined = mode == "concat" or (mode == "add" and len(present) == 1)  # carried over exactly
        stack = stacked(parts) if mode == "svd" or (measure and not joined) else None
        if stack is not None and not all(bool(torch.isfinite(x).all()) for x in stack):
            raise LoraMergeError(f"module {name}: the weighted factors overflow float32; use smaller weights")
        if joined:
            up, down = concat_parts(parts, dtype, arena.factors(name) if arena else None)
            alpha = float(up.shape[1])
            if arena:
                arena.mark_filled(name)
        elif mode == "svd":
            target = conv_rank if first.kernel != (1, 1) else rank
            try:
                up, down = svd_parts(parts, target, energy, stack)
            except torch.linalg.LinAlgError:  # an overflow inside the factorisation
                raise LoraMergeError(f"module {name}: the SVD failed on values too large for float32; "
                                     "use smaller weights") from None
            alpha = float(up.shape[1])
        else:
            up, down, alpha = _add(present, parts, weights, factors, name)
        up, down = up.to(dtype), down.to(dtype)
        if not measure:
            error = None
        elif joined:
            error = concat_round_off(parts, up, down)
        else:
            error = relative_error(parts, [(up, down, alpha / up.shape[1])], stack)
        return _shaped(first, up.cpu(), down.cpu(), alpha), ReportRow(name, int(up.shape[1]), error)

    merged: dict[str, tuple[LoraModule, ReportRow]] = {}
    try:
        work = arena.fill_order() if arena else order  # file order: the hash follows the filled modules
        for done, (module, row) in enumerate(map_in_workers(merge_module, work, worker_count(dev))):
            merged[module.name] = module, row
            if progress and (done % 16 == 0 or done == len(order) - 1):
                progress(done + 1, len(order), module.name)
    except BaseException:
        if arena:
            arena.abandon()
        raise

    result_report = MergeReport(mode, measured=measure, rows=[merged[name][1] for name in order])
    out = LoraFile(modules={name: merged[name][0] for name in order}, metadata={}, family=family,
                   embeddings=plan.embeddings)
    if arena:
        out.data_hash = arena.sealed_hash()
    if mode == "concat":
        out.metadata.update(join_layout(names, loras))
    return MergeResult(out, result_report, rank, conv_rank)


@dataclass
class MergePlan:
    """What a merge's inputs and options come to once checked: one weight and block-weight table
    per input, the family, the svd ranks and the output's modules in order."""
    weights: list[float]
    factors: list[dict | None]
    family: str
    rank: int | None
    conv_rank: int | None
    order: list[str]
    embeddings: dict = field(default_factory=dict)  # the inputs' bundled embeddings, for the output

    def coefficient(self, k: int, name: str, module) -> float:
        """The factor input k's module (named name) contributes with: weight · block weight · alpha/rank."""
        return self.weights[k] * lbw_factor(self.factors[k], name) * module.scale


def check_inputs(loras: list, names: list[str], mode: str, weights, lbw, rank, conv_rank, energy,
                 presets) -> MergePlan:
    """Refuse what cannot be merged (too few inputs, bad weights or lbw, mixed families, ranks outside
    svd, layers of different shapes, an output too large) before anything is computed."""
    n = len(loras)
    rank, conv_rank, energy = check_options(mode, n, weights, lbw, rank, conv_rank, energy)
    weights = input_weights(weights, n)
    family = _common_family(loras, names)
    factors = _block_weights(lbw, n, family, presets)
    rank, conv_rank = _ranks(mode, rank, conv_rank, loras)
    order = _module_order(loras, names)
    if all(w * lbw_factor(f, name) == 0 for name in order for lora, w, f in zip(loras, weights, factors)
           if name in lora.modules):
        raise LoraMergeError("every module gets weight 0 (the weights times the lbw block weights): the merged "
                             "LoRA would change nothing; check the weights and lbw")
    _check_output_size(mode, order, loras, rank, conv_rank)
    return MergePlan(weights, factors, family, rank, conv_rank, order, joined_embeddings(loras, names))


def join_layout(names: list[str], loras: list) -> dict[str, str]:
    """The metadata that records which ranks of a joined file came from which input."""
    return {METADATA_KEY: concat_layout(names, loras).to_metadata()}


def joined_modules(loras: list, order: list[str], dtype: torch.dtype) -> dict[str, LazyModule]:
    """The shapes of a concat's modules (LoraFiles or LazyLoras in): ranks added up, shaped like
    the first input's module, alpha = rank, factors in dtype."""
    out = {}
    for name in order:
        mods = [lora.modules[name] for lora in loras if name in lora.modules]
        first, r = mods[0], sum(m.rank for m in mods)
        down = (r, *first.down.shape[1:])
        up = (first.out_features, r, 1, 1) if first.is_conv else (first.out_features, r)
        out[name] = LazyModule(name, FactorSource(dtype, down), FactorSource(dtype, up), float(r))
    return out


def _concat_arena(order: list[str], loras: list[LoraFile], dtype: torch.dtype) -> FactorArena:
    """Room for the joined factors of every module (as matrices) and their alphas, in the order the
    saved file holds them."""
    joined = joined_modules(loras, order, dtype)
    return FactorArena({name: ((m.out_features, m.rank), (m.rank, m.flat_in)) for name, m in joined.items()},
                       dtype, {name: m.alpha for name, m in joined.items()})


def _add(present, parts, weights, factors, name):
    """The classic sum on the factors already prepared for the report (their coefficients hold the scale)."""
    ranks = {m.rank for _, m in present}
    if len(ranks) > 1:
        raise LoraMergeError(f"add mode needs equal ranks; module {name} has ranks {sorted(ranks)} (use concat or svd)")
    summed = [(u, d, weights[k] * lbw_factor(factors[k], name), m.alpha if m.alpha is not None else float(m.rank))
              for (k, m), (u, d, _) in zip(present, parts)]
    alphas = [a for *_, a in summed]
    if any(not a > 0 for a in alphas):  # the classic formula takes √(α_k/α_1)
        raise LoraMergeError(f"add mode needs positive alphas; module {name} has alphas {alphas} (use concat or svd)")
    up, down = add_parts(summed)
    return up, down, summed[0][3]


def _shaped(like: LoraModule, up: torch.Tensor, down: torch.Tensor, alpha: float) -> LoraModule:
    r = up.shape[1]
    if like.is_conv:
        return LoraModule(like.name, down.reshape(r, like.in_features, *like.kernel).contiguous(),
                          up.reshape(like.out_features, r, 1, 1).contiguous(), alpha)
    return LoraModule(like.name, down.contiguous(), up.contiguous(), alpha)


def input_weights(weights, n: int) -> list[float]:
    """One finite weight per input (default 1; a single weight applies to all)."""
    if weights is None:
        return [1.0] * n
    if isinstance(weights, str):  # "1,-0.5", as on the command line
        weights = weights.split(",")
    elif isinstance(weights, numbers.Real):
        weights = [weights]
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise LoraMergeError(f"weights {weights!r}: expected numbers, one per input") from None
    if len(weights) == 1 and n > 1:
        weights = weights * n
    if len(weights) != n:
        raise LoraMergeError(f"got {len(weights)} weights for {n} inputs; give one weight per input")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise LoraMergeError(f"weight {bad[0]} is not a finite number")
    return weights


def _common_family(loras: list[LoraFile], names: list[str]) -> str:
    family = loras[0].family
    for lora, name in zip(loras, names):
        if lora.family != family:
            raise LoraMergeError(f"cannot merge {LABELS[family]} and {LABELS[lora.family]} LoRAs "
                                 f"({names[0]} is {LABELS[family]}, {name} is {LABELS[lora.family]})")
    return family


def input_lbw_specs(lbw, n: int) -> list[str | None]:
    """One lbw spec per input (None: none; a single spec, alone or in a list, applies to all; empty means none)."""
    if lbw is None:
        return [None] * n
    specs = [lbw] if isinstance(lbw, str) else list(lbw)
    if len(specs) == 1 and n > 1:
        specs = specs * n
    if len(specs) != n:
        raise LoraMergeError(f"got {len(specs)} lbw specs for {n} inputs; give one for all or one per input")
    for k, spec in enumerate(specs):
        if spec is not None and not isinstance(spec, str):
            raise LoraMergeError(f"lbw {spec!r} for input {k + 1} is not text: give a preset name or "
                                 "comma-separated numbers, or None")
    return [s if s and s.strip() else None for s in specs]


def _block_weights(lbw, n: int, family: str, presets) -> list[dict | None]:
    return [parse_lbw(s, family, presets) if s else None for s in input_lbw_specs(lbw, n)]


def check_options(mode: str, n: int, weights, lbw, rank, conv_rank, energy) -> tuple:
    """Refuse what is wrong whatever the files hold (input count, weights, lbw count, rank options),
    so that a bad option is reported before any file is read.  mode: canonical.  Returns rank and conv
    rank as int and energy as float (a script may pass 2.0 or a numpy number)."""
    if n < 2 and mode != "svd":
        raise LoraMergeError(f"{mode} needs at least two inputs, got {n}")
    if n < 1:
        raise LoraMergeError("svd needs at least one input, got none")
    input_weights(weights, n)
    input_lbw_specs(lbw, n)
    for label, value in (("rank", rank), ("conv rank", conv_rank), ("energy", energy)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise LoraMergeError(f"{label} {value!r} is not a number")
    if energy is not None and not (0.0 < float(energy) <= 1.0):
        raise LoraMergeError(f"energy {energy} must be a fraction in (0, 1]")
    for label, value in (("rank", rank), ("conv rank", conv_rank)):
        if value is not None and (not math.isfinite(value) or int(value) != value or value < 1):
            raise LoraMergeError(f"{label} {value} must be a positive whole number")
    refuse_svd_options(mode, rank, conv_rank, energy)
    return (None if rank is None else int(rank), None if conv_rank is None else int(conv_rank),
            None if energy is None else float(energy))


def refuse_svd_options(mode: str, rank, conv_rank, energy) -> None:
    """Refuse rank, conv rank or energy given for a mode that keeps every rank.  mode: canonical."""
    if mode != "svd":
        given = [label for label, value in (("rank", rank), ("conv rank", conv_rank), ("energy", energy))
                 if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise LoraMergeError(f"{' and '.join(given)} only {verb} to svd merges (mode {mode} keeps every rank)")


def _ranks(mode, rank, conv_rank, loras):
    """The ranks an svd merge aims at, or caps with an energy share (rank defaults to the largest
    input rank, as resize tools take a largest rank); None outside svd."""
    if mode != "svd":
        return rank, conv_rank
    if rank is None:
        rank = max(lora.max_rank for lora in loras)
    return rank, conv_rank if conv_rank is not None else rank


def _module_order(loras: list[LoraFile], names: list[str]) -> list[str]:
    order: dict[str, LoraModule] = {}
    for lora, name in zip(loras, names):
        for m, mod in lora.modules.items():
            first = order.setdefault(m, mod)
            if first.weight_shape != mod.weight_shape:
                raise LoraMergeError(f"module {m} changes a {tuple(first.weight_shape)} weight in one input "
                                     f"and a {tuple(mod.weight_shape)} weight in {name}")
    return list(order)


def _check_output_size(mode, order, loras, rank, conv_rank) -> None:
    total = 0
    for m in order:
        mods = [lora.modules[m] for lora in loras if m in lora.modules]
        r = sum(x.rank for x in mods) if mode == "concat" else max(x.rank for x in mods)
        if mode == "svd":
            cap = conv_rank if mods[0].kernel != (1, 1) else rank
            r = min(sum(x.rank for x in mods), cap) if cap else sum(x.rank for x in mods)
        total += r * (mods[0].out_features + mods[0].flat_in)
    if total > MAX_OUTPUT_ELEMENTS:
        raise LoraMergeError(f"the output would hold {total:,} values ({total * 4 / 2**30:.1f} GiB); refusing")
