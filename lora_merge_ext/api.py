"""The Python API: load, merge, realize, save (and Σ on a live torch model in live_sigma)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import concat_stream
from .concat_stream import write_concat
from .devices import resolve_device
from .errors import LoraMergeError
from .factor_arena import ALPHA_KEY, DOWN_KEY, UP_KEY
from .finite_check import find_nonfinite
from .layout import layout_of, unique_name
from .lazy_lora import LazyLora, Unstreamable, open_lazy
from .lbw import parse_lbw
from .loading import load_lora
from .lora_file import LoraFile
from .merge import (MergeResult, canonical_mode, check_inputs, check_options, input_lbw_specs, input_weights,
                    join_layout, joined_modules, merge_loras)
from .merge_report import MergeReport
from .output_metadata import output_metadata
from .pointwise import flat_modules_to_widen
from .presets import as_presets
from .realize import multiplier, realize_lora
from .safetensors_header import show
from .safetensors_io import input_hash
from .safetensors_write import save_safetensors_atomic
from .sigma import parse_sigma
from .workers import map_in_workers, worker_count

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SavedFile:
    path: str
    sha256: str  # sshs_model_hash: sha256 of the tensor bytes
    size: int


def load(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA file (kohya, LoCon, Tucker, PEFT; fp32/fp16/bf16).  A LoraFile (or a merge's result)
    is returned as it is."""
    return as_lora(path)


def as_lora(value, what: str = "LoRA") -> LoraFile:
    """A LoraFile from a file path, a LoraFile, or a merge's result (its .lora); anything else is
    refused in one line."""
    if isinstance(value, LoraFile):
        return value
    if isinstance(value, MergeResult):
        return value.lora
    if isinstance(value, (str, os.PathLike)):
        return load_lora(value)
    raise LoraMergeError(f"{what} {show(repr(value), 80)}: expected a file path, a LoraFile (api.load) or a "
                         f"merge's result, not {type(value).__name__}")


def _input_list(inputs) -> list:
    """The inputs of a merge as a list: one path, LoraFile or result alone counts as one input."""
    if isinstance(inputs, (str, os.PathLike, LoraFile, MergeResult)):
        return [inputs]
    try:
        return list(inputs)
    except TypeError:
        raise LoraMergeError(f"inputs {show(repr(inputs), 80)}: expected a list of files") from None


def merge(inputs: list, *, mode: str = "concat", weights=None, lbw=None, rank: int | None = None,
          conv_rank: int | None = None, energy: float | None = None, device: str = "cpu",
          progress=None, presets=None, report: bool | None = None, dtype: str = "fp32") -> MergeResult:
    """Merge LoRA files (paths or LoraFiles).  See DESIGN.md §3 for what each mode guarantees.
    report: measure each module's relative error (default: for add and svd, not for the exact concat).
    dtype: fp32, fp16 or bf16, what the result will be saved as; the merge computes in float32 and
    keeps each output module in dtype (less memory, and the report measures what is saved)."""
    target = torch_dtype(dtype)
    inputs = _input_list(inputs)
    presets = as_presets(presets)
    rank, conv_rank, energy = check_options(canonical_mode(mode), len(inputs), weights, lbw, rank, conv_rank, energy)
    loras = list(map_in_workers(lambda x: as_lora(x, "input"), inputs, worker_count()))
    names = component_names(loras)
    result = merge_loras(loras, names, mode=mode, weights=weights, lbw=lbw, rank=rank, conv_rank=conv_rank,
                         energy=energy, device=device, presets=presets, progress=progress, report=report,
                         dtype=target)
    provenance = _provenance(mode, names, loras, [input_hash(l) for l in loras], weights, lbw)
    if provenance["mode"] == "svd":
        provenance.update(rank=result.rank, conv_rank=result.conv_rank, energy=energy)
    result.lora.metadata = output_metadata(result.lora, loras, provenance)
    result.lora.sources = [l.path for l in loras if l.path] + [s for l in loras for s in l.sources]
    return result


def merge_to_file(inputs: list, output: str | os.PathLike, *, mode: str = "concat", weights=None, lbw=None,
                  rank: int | None = None, conv_rank: int | None = None, energy: float | None = None,
                  device: str = "cpu", progress=None, presets=None, report: bool | None = None, dtype: str = "fp32",
                  overwrite: bool = False, protect=()) -> tuple[SavedFile, MergeReport]:
    """merge() then save() in one step.  A concat of .safetensors files on the CPU is streamed into
    the file where the OS offers positioned reads and writes (see concat_stream: faster, and the
    result is never held in memory); anything else is merged in memory, then saved.  The file and
    the report are the same either way."""
    check_output_name(output)
    inputs = [x.lora if isinstance(x, MergeResult) else x for x in _input_list(inputs)]
    presets = as_presets(presets)
    protect = [*(x.path if isinstance(x, LoraFile) else x for x in inputs), *protect]
    protect = [p for p in protect if p is not None]  # a LoraFile made in memory has no file to protect
    canonical = canonical_mode(mode)
    rank, conv_rank, energy = check_options(canonical, len(inputs), weights, lbw, rank, conv_rank, energy)
    plain_concat = canonical == "concat" and (rank, conv_rank, energy) == (None,) * 3
    if (concat_stream.AVAILABLE and plain_concat and resolve_device(device).type == "cpu"
            and all(isinstance(x, (str, os.PathLike)) for x in inputs)):
        streamed = _stream_concat(inputs, output, weights, lbw, presets, torch_dtype(dtype), overwrite, protect,
                                  progress, bool(report))
        if streamed is not None:
            return streamed
    result = merge(inputs, mode=mode, weights=weights, lbw=lbw, rank=rank, conv_rank=conv_rank, energy=energy,
                   device=device, progress=progress, presets=presets, report=report, dtype=dtype)
    return save(result.lora, output, dtype=dtype, overwrite=overwrite, protect=protect), result.report


def _stream_concat(inputs, output, weights, lbw, presets, dtype, overwrite, protect, progress, report):
    """write_concat when every input can be streamed; None when one cannot (merge it in memory)."""
    loras: list[LazyLora] = []
    try:
        for x in inputs:
            lora = open_lazy(x)
            if lora is None:
                return None
            loras.append(lora)
        if flat_modules_to_widen(loras):  # a 1×1 conv stored 2-D and 4-D: reshaped in memory
            return None
        names = component_names(loras)
        plan = check_inputs(loras, names, "concat", weights, lbw, None, None, None, presets)
        for lora in loras:
            lora.start_hash()  # beside the merge; not for inputs refused above
        result = LoraFile(joined_modules(loras, plan.order, dtype), join_layout(names, loras), plan.family)

        def metadata(hashes: list[str]) -> dict[str, str]:
            return output_metadata(result, loras, _provenance("concat", names, loras, hashes, weights, lbw))

        digest, report = write_concat(loras, plan, result, metadata, output, overwrite=overwrite, protect=protect,
                                      progress=progress, report=report)
    except Unstreamable:
        return None
    finally:
        for lora in loras:
            lora.close()
    output = os.fspath(output)
    return SavedFile(output, digest, os.path.getsize(output)), report


def _provenance(mode: str, names: list[str], loras: list, hashes: list, weights, lbw) -> dict:
    """The ljl_provenance record of a merge: mode, and each input's name, file, hash (with where it
    comes from, see input_hash), weight and lbw."""
    ws, specs = input_weights(weights, len(loras)), input_lbw_specs(lbw, len(loras))
    return {"mode": canonical_mode(mode),
            "inputs": [{"name": n, "file": os.path.basename(l.path) if l.path else None,
                        "sha256": h, "sha256_from": source, "weight": w, "lbw": s}
                       for n, l, (h, source), w, s in zip(names, loras, hashes, ws, specs)]}


def realize(lora, sigma, *, lbw: str | None = None, te: float = 1.0, unet: float = 1.0, presets=None) -> LoraFile:
    """Bake Σ (text or per-rank list), lbw and te/unet multipliers into a plain LoRA (what `<ljl:…>` applies)."""
    lora = as_lora(lora)
    layout = layout_of(lora)
    per_rank = parse_sigma(sigma, layout)  # text, a number, or a list per component or per rank
    te, unet = multiplier(te, "te"), multiplier(unet, "unet")
    weights = parse_lbw(lbw, lora.family, as_presets(presets)) if lbw else None  # preset.txt is read for names only
    out = realize_lora(lora, layout, per_rank, weights, te, unet)
    sha256, sha256_from = input_hash(lora)
    source = {"file": os.path.basename(lora.path) if lora.path else None, "sha256": sha256, "sha256_from": sha256_from}
    out.metadata = output_metadata(out, [lora], {"mode": "realize", "inputs": [source],
                                                 "sigma": sigma if isinstance(sigma, str) else per_rank,
                                                 "lbw": lbw, "te": te, "unet": unet})
    out.sources = ([lora.path] if lora.path else []) + list(lora.sources)
    return out


def save(lora: LoraFile, path: str | os.PathLike, *, dtype: str = "fp32", overwrite: bool = False,
         protect=()) -> SavedFile:
    """Write kohya-format safetensors atomically; never over an input, nor an existing file unless overwrite.
    lora: a LoraFile or a merge's result."""
    if isinstance(lora, MergeResult):
        lora = lora.lora
    if not isinstance(lora, LoraFile):
        raise LoraMergeError(f"save: {show(repr(lora), 80)} is not a LoraFile or a merge's result "
                             f"({type(lora).__name__})")
    target = torch_dtype(dtype)
    path = os.fspath(path)
    check_output_name(path)
    if not lora.modules:
        raise LoraMergeError(f"{path}: the LoRA has no modules (Σ or lbw switched every one off); nothing to save")
    tensors = state_dict(lora, target)
    bad = find_nonfinite(tensors)
    if bad:  # only an overflow gets here: inputs with NaN or Inf are refused when read
        hint = "save as fp32 or bf16, or use smaller weights" if target == torch.float16 else "use smaller weights"
        raise LoraMergeError(f"{path}: values too large for {dtype} in {bad[0].rsplit('.', 2)[0]} "
                             f"({len(bad)} tensors); {hint}")
    digest = save_safetensors_atomic(tensors, dict(lora.metadata), path, overwrite=overwrite,
                                     protect=[*lora.sources, *([lora.path] if lora.path else []), *protect],
                                     hashed=lora.data_hash)
    return SavedFile(path, digest, os.path.getsize(path))


def check_output_name(path: str | os.PathLike) -> None:
    """The output is safetensors: under a .pt or extension-less name the WebUI would read it as a
    pickle, or not list it."""
    if os.path.splitext(os.fspath(path))[1].lower() != ".safetensors":
        raise LoraMergeError(f"{show(os.fspath(path), 400)}: the output is a safetensors file; "
                             "name it NAME.safetensors")


def torch_dtype(name: str) -> torch.dtype:
    """fp32/fp16/bf16 (or float32/float16/bfloat16) as a torch dtype."""
    try:
        return DTYPES[name.lower()]
    except (KeyError, AttributeError):
        raise LoraMergeError(f"dtype {name!r} is not fp32, fp16 or bf16") from None


def state_dict(lora: LoraFile, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """kohya tensors: .lora_down.weight / .lora_up.weight in dtype, .alpha kept in float32 (exact),
    bundled embeddings as stored."""
    out = {}
    for name, m in lora.modules.items():
        out[DOWN_KEY.format(name)] = m.down.to(dtype).contiguous()
        out[UP_KEY.format(name)] = m.up.to(dtype).contiguous()
        if m.alpha is not None:
            out[ALPHA_KEY.format(name)] = torch.tensor(float(m.alpha), dtype=torch.float32)
    out.update({key: t.contiguous() for key, t in lora.embeddings.items()})  # bundled embeddings, as stored
    return out


def component_names(loras: list[LoraFile]) -> list[str]:
    """Unique component names from the file names (a, b, a_2 …), with the characters a Σ vector or a
    tag uses (, = : < > *) replaced by _ and outer spaces dropped, so that each can be picked as
    NAME=value."""
    names: list[str] = []
    for k, lora in enumerate(loras):
        base = os.path.splitext(os.path.basename(lora.path))[0].strip() if lora.path else ""
        base = base.translate(str.maketrans(",=:<>*", "______")) or f"input{k + 1}"
        names.append(unique_name(base, names))
    return names
