"""A concat merge written straight into its file, module by module: the joined LoRA is never held
in memory whole, and neither are the inputs.

The header is laid out first (every shape of a concat is known from the inputs' headers; the hashes
it carries have a fixed length and are filled in at the end).  Then, in file order, each input
factor is read into a small buffer (lazy_lora), each joined module is computed by
factor_math.concat_parts, as merge() computes it, into an OrderedWriter buffer, and written and
hashed in order.  The file is byte for byte what merge() then save() write, and the report (when
asked for) holds the same per-module round-off that merge() measures.
"""
from __future__ import annotations

import math
import os
import threading
from functools import partial
from typing import Callable, Iterable

import torch

from .atomic_write import preallocate, write_all, write_file_atomic
from .factor_arena import data_layout
from .factor_math import concat_parts, concat_round_off
from .finite_check import block_is_finite
from .lazy_lora import LazyLora, LazyModule, Unstreamable
from .lora_file import LoraFile
from .merge import MergePlan
from .merge_report import MergeReport, ReportRow
from .ordered_writer import BUFFER_BYTES, OrderedWriter
from .safetensors_io import declared_hash, input_hash
from .safetensors_write import HASH_PLACEHOLDER, entries_json, header_bytes, kohya_legacy_hash
from .workers import one_torch_thread, worker_count

Metadata = Callable[[list[tuple[str, str]]], dict[str, str]]  # the output's metadata, given input_hash of each input
AVAILABLE = all(hasattr(os, f) for f in ("pread", "preadv", "pwrite"))  # not on Windows: merge in memory there


def write_concat(loras: list[LazyLora], plan: MergePlan, result: LoraFile, metadata: Metadata,
                 path: str | os.PathLike, *, overwrite: bool = False, protect: Iterable = (),
                 progress: Callable[[int, int, str], None] | None = None,
                 report: bool = False) -> tuple[str, MergeReport]:
    """Write the concat of loras (result: its joined_modules, family and join layout) to path
    atomically; returns (sshs_model_hash, report).  report: measure each module's ‖ΔW_out − T‖/‖T‖
    (the round-off of the output dtype), as merge(report=True) does.  Raises Unstreamable when an
    input turns out to hold NaN or Inf or changes meanwhile (nothing is written then)."""
    entries = _entries(result)
    table = entries_json([(key, dtype, shape) for key, _, _, shape, dtype in entries])
    meta = metadata([input_hash(lora) if declared_hash(lora.metadata) else (HASH_PLACEHOLDER, "data")
                     for lora in loras])
    meta.update(sshs_legacy_hash="0" * 8, sshs_model_hash=HASH_PLACEHOLDER)
    head_length = len(header_bytes(table, meta))
    data_length = sum(math.prod(shape) * dtype.itemsize for *_, shape, dtype in entries)
    errors: dict[str, float] | None = {} if report else None

    def fill(fd: int) -> None:
        preallocate(fd, head_length + data_length)
        # on two cores the hash has one and the merge the other; each further core is a worker.  A
        # report costs far more than the rest (Gram matrices per module): it takes every core.
        cores = worker_count()
        if report:
            workers = cores
        else:
            workers = cores - 1 if cores > 2 else 0
        writer = OrderedWriter(fd, head_length, workers, FiniteCheck(result.modules))
        try:
            with one_torch_thread():  # small ops, while the hashes run on other cores
                _write_pieces(writer, entries, loras, plan, {n: m.alpha for n, m in result.modules.items()},
                              progress, errors)
            digest = writer.finish()
        except BaseException:
            writer.abandon()
            raise
        if not writer.passed:
            raise Unstreamable("a NaN or Inf in an input, or a value too large for the output dtype")
        hashes = [input_hash(lora) for lora in loras]
        if any(h is None for h, _ in hashes) or not all(lora.unchanged() for lora in loras):
            raise Unstreamable("an input changed while it was being read")
        final = metadata(hashes)
        final["sshs_legacy_hash"] = kohya_legacy_hash(
            table, lambda start, stop: os.pread(fd, stop - start, head_length + start), final)
        final["sshs_model_hash"] = digest
        head = header_bytes(table, final)
        if len(head) != head_length:
            raise RuntimeError("the header changed length while the file was written")
        write_all(fd, head, 0)
        meta.update(final)

    write_file_atomic(path, fill, overwrite=overwrite, protect=protect)
    rows = [ReportRow(name, m.rank, errors[name] if report else None) for name, m in result.modules.items()]
    return meta["sshs_model_hash"], MergeReport("concat", measured=report, rows=rows)


def _entries(result: LoraFile) -> list[tuple[str, str, str, tuple[int, ...], torch.dtype]]:
    """(key, module, role, shape, dtype) of every tensor in file order (see factor_arena.data_layout)."""
    dtype = next(iter(result.modules.values())).down.dtype
    return data_layout({name: (m.up.shape, m.down.shape) for name, m in result.modules.items()}, dtype)


def _write_pieces(writer: OrderedWriter, entries, loras: list[LazyLora], plan: MergePlan,
                  alphas: dict[str, float], progress, errors: dict[str, float] | None) -> None:
    """Hand the writer the data section in pieces of whole modules, each at most one buffer (or one
    module); report progress as pieces are handed over."""
    scratch = threading.local()
    total, done, piece, size = len(plan.order), 0, [], 0
    for item in _items(entries):
        if piece and size + item[0] > BUFFER_BYTES:
            writer.put(size, partial(_fill_piece, piece, loras, plan, alphas, scratch, errors))
            done += sum(1 for _, _, role, *_ in piece if role == "down")
            if progress:
                progress(done, total, piece[-1][1])
            piece, size = [], 0
        piece.append(item)
        size += item[0]
    if piece:
        writer.put(size, partial(_fill_piece, piece, loras, plan, alphas, scratch, errors))
        if progress:
            progress(total, total, piece[-1][1])


def _items(entries) -> list[tuple]:
    """(bytes, module, role, dtype, shapes): an alpha, or a module's down and up together (role
    "down"; they lie next to each other in the file, down first, shapes (down, up))."""
    items = []
    for i, (_key, name, role, shape, dtype) in enumerate(entries):
        if role == "alpha":
            items.append((dtype.itemsize, name, role, dtype, ()))
        elif role == "down":
            up_shape = entries[i + 1][3]
            assert entries[i + 1][1:3] == (name, "up"), "a module's up follows its down in the file"
            items.append(((math.prod(shape) + math.prod(up_shape)) * dtype.itemsize, name, role, dtype,
                          (shape, up_shape)))
    return items


def _fill_piece(piece, loras: list[LazyLora], plan: MergePlan, alphas: dict[str, float],
                scratch: threading.local, errors: dict[str, float] | None, out: torch.Tensor) -> None:
    """Compute the items of a piece into out (uint8, their size); with errors, measure each module's
    round-off into it."""
    at = 0
    for nbytes, name, role, dtype, shapes in piece:
        block = out[at:at + nbytes]
        at += nbytes
        if role == "alpha":
            block.view(dtype).fill_(alphas[name])
            continue
        down_shape, up_shape = shapes
        down_bytes = math.prod(down_shape) * dtype.itemsize
        present = [(k, lora.modules[name]) for k, lora in enumerate(loras) if name in lora.modules]
        need = sum(_padded(m.up.nbytes) + _padded(m.down.nbytes) for _, m in present)
        if getattr(scratch, "buffer", None) is None or scratch.buffer.numel() < need:
            scratch.buffer = torch.empty(need, dtype=torch.uint8)
        parts = _read_parts(loras, plan, name, present, scratch.buffer)
        up, down = concat_parts(parts, dtype, (block[down_bytes:].view(dtype).reshape(up_shape[0], -1),
                                               block[:down_bytes].view(dtype).reshape(down_shape[0], -1)))
        if errors is not None:
            errors[name] = concat_round_off(parts, up, down)


def _read_parts(loras: list[LazyLora], plan: MergePlan, name: str, present, scratch: torch.Tensor) -> list:
    """(up, down, coefficient) of module name in each input that has it, read into scratch."""
    parts, at = [], 0
    for k, m in present:
        up = loras[k].read_into(m.up, scratch[at:at + m.up.nbytes])
        at += _padded(m.up.nbytes)
        down = loras[k].read_into(m.down, scratch[at:at + m.down.nbytes])
        at += _padded(m.down.nbytes)
        parts.append((up, down, plan.coefficient(k, name, m)))
    return parts


class FiniteCheck:
    """True for a piece of the data section without NaN or Inf.  The factors have one dtype; the
    float32 alphas of a half-precision file (joined ranks, whole numbers) read as two finite halves."""

    def __init__(self, modules: dict[str, LazyModule]):
        self.dtype = next(iter(modules.values())).down.dtype if modules else torch.float32

    def __call__(self, piece: torch.Tensor) -> bool:
        return block_is_finite(piece.view(self.dtype))


def _padded(nbytes: int) -> int:
    """Room for nbytes in the scratch buffer, keeping the next factor 8-byte aligned."""
    return nbytes + (-nbytes % 8)
