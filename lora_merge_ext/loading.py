"""Read a LoRA file into a LoraFile: group keys into modules, normalise names, validate shapes."""
from __future__ import annotations

import math
import os

import torch

from .bundled import embedding_names, is_bundled
from .errors import LoraMergeError
from .family import detect_family
from .finite_check import find_nonfinite
from .key_names import (KOHYA_SUFFIXES, PEFT_SUFFIXES, is_sgm_name, sd_unet_from_sgm, sdxl_unet_to_sgm, split_key,
                        unsupported_type)
from .lora_file import LoraFile, LoraModule
from .safetensors_io import read_state_file
from .workers import one_torch_thread

CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                       "model_ema.", "state_dict.", "text_model.", "down_blocks.", "time_embedding.")


def load_lora(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA (kohya, LoCon, Tucker or PEFT/diffusers keys; fp32/fp16/bf16) from a file."""
    path = os.fspath(path)
    with one_torch_thread():  # small ops, while the file's hash is computed on another core
        loaded = read_state_file(path)
        lora = lora_from_state_dict(loaded.tensors, loaded.metadata, path, nonfinite=loaded.nonfinite_keys())
    lora.digest = loaded.digest
    return lora


def lora_from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                         where: str | None = None, *, nonfinite: list[str] | None = None) -> LoraFile:
    """Build a LoraFile from a state dict; raises LoraMergeError naming the problem.
    nonfinite: the keys holding NaN or Inf, when the caller has already looked (else they are found here)."""
    label = where or "LoRA"
    bad_ids = {id(tensors[k]) for k in (find_nonfinite(tensors) if nonfinite is None else nonfinite)}
    groups = group_keys(tensors, label)
    downs = {m: g["down"] for m, g in groups.items() if "down" in g}
    family = detect_family(downs, metadata)
    modules: dict[str, LoraModule] = {}
    bad: list[str] = []
    for raw, roles in groups.items():
        name = kohya_name(raw, family)
        if name in modules:
            raise LoraMergeError(f"{label}: module {name} appears twice (under two key forms)")
        modules[name] = _module(name, roles, label)
        if _holds_nonfinite(roles, modules[name], bad_ids):
            bad.append(name)
    embeddings = {k: t for k, t in tensors.items() if is_bundled(k)}
    bad += [f"bundled embedding {n}" for n in embedding_names(k for k, t in embeddings.items() if id(t) in bad_ids)]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise LoraMergeError(f"{label}: NaN or Inf values in {', '.join(bad[:3])}{more}")
    return LoraFile(modules=modules, metadata=dict(metadata), family=family, path=where, embeddings=embeddings)


def _holds_nonfinite(roles: dict[str, torch.Tensor], module: LoraModule, bad_ids: set[int]) -> bool:
    """A NaN or Inf in the module's tensors as read, or in the factors derived from them (a float64
    factor narrowed to float32 or a folded Tucker core can overflow)."""
    if any(id(t) in bad_ids for t in roles.values()):
        return True
    if module.alpha is not None and not math.isfinite(module.alpha):
        return True
    derived = [f for f, role in ((module.down, "down"), (module.up, "up"))
               if f.dtype != roles[role].dtype or "mid" in roles]
    return any(not bool(torch.isfinite(f).all()) for f in derived)


def _stored(t: torch.Tensor) -> torch.Tensor:
    """Keep fp32/fp16/bf16 as stored (memory); anything else becomes float32."""
    return t if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else t.float()


def group_keys(tensors: dict[str, torch.Tensor], label: str) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if is_bundled(key):  # before the type check: an embedding may be named b2, w_norm, …
            continue
        kind = unsupported_type(key)
        if kind:
            raise LoraMergeError(f"{label}: key {key} is a {kind} module; only LoRA and LoCon modules can be merged")
        parts = split_key(key)
        if parts is None:
            if key.startswith(CHECKPOINT_PREFIXES):
                raise LoraMergeError(f"{label}: this is a model checkpoint, not a LoRA (key {key})")
            raise LoraMergeError(f"{label}: key {key} is not a LoRA key ({_key_problem(key)})")
        module, role, _form = parts
        roles = groups.setdefault(module, {})
        if role in roles:
            raise LoraMergeError(f"{label}: module {module} has two {role} tensors")
        roles[role] = tensor
    if not groups:
        raise LoraMergeError(f"{label}: no LoRA modules found")
    return groups


def _key_problem(key: str) -> str:
    """Why a key is not read: its ending, or (for a LoRA ending) its module name's form."""
    if key.endswith(tuple("." + s for s in (*KOHYA_SUFFIXES, *PEFT_SUFFIXES))):
        return ("its module name is in no form this tool reads: kohya lora_unet_/lora_te_/lora_te1_/lora_te2_, "
                "or diffusers/PEFT unet./text_encoder./text_encoder_2./base_model.model. paths")
    return "expected .lora_down/.lora_up/.alpha"


def kohya_name(module: str, family: str) -> str:
    """The name kohya writes for this module on this family (SDXL UNet: the model's block names;
    SD1/SD2 UNet: diffusers-style names; the text encoder: lora_te1_ on SDXL, lora_te_ on SD1/SD2,
    whose lora_te1_ names the WebUI also reads), so that the same layer has one name in every file."""
    if family != "sdxl":
        if module.startswith("lora_te1_"):
            return "lora_te_" + module[len("lora_te1_"):]
        return sd_unet_from_sgm(module)
    if module.startswith("lora_te_"):
        module = "lora_te1_" + module[len("lora_te_"):]
    if module.startswith("lora_unet_") and not is_sgm_name(module):
        module = sdxl_unet_to_sgm(module)
    return module


def _module(name: str, roles: dict[str, torch.Tensor], label: str) -> LoraModule:
    if "down" not in roles or "up" not in roles:
        missing = "down" if "down" not in roles else "up"
        raise LoraMergeError(f"{label}: module {name} has no {missing} weight")
    down = _stored(roles["down"])
    up = _stored(roles["up"])
    where = f"{label}: module {name}"
    check_factor_shapes(where, tuple(down.shape), tuple(up.shape))
    if "mid" in roles:
        down = _fold_tucker(roles["mid"].float(), down.float(), where)
    if down.dim() == 4 and up.dim() == 2:
        up = up[:, :, None, None]
    elif down.dim() == 2 and up.dim() == 4:
        up = up[:, :, 0, 0]
    alpha = alpha_value(where, roles["alpha"]) if "alpha" in roles else None
    return LoraModule(name=name, down=down.contiguous(), up=up.contiguous(), alpha=alpha)


def check_factor_shapes(where: str, down: tuple[int, ...], up: tuple[int, ...]) -> None:
    """Refuse factors that cannot make a LoRA module: 2-D or 4-D, non-empty, a 1×1 up, equal ranks."""
    if len(down) not in (2, 4) or len(up) not in (2, 4) or 0 in down or 0 in up:
        raise LoraMergeError(f"{where} has down {down} and up {up}; expected 2-D or 4-D, non-empty")
    if len(up) == 4 and up[2:] != (1, 1):
        raise LoraMergeError(f"{where}: up weight {up} must be 1×1")
    if up[1] != down[0]:
        raise LoraMergeError(f"{where}: up {up} does not fit down {down} (rank {down[0]})")


def alpha_value(where: str, a: torch.Tensor) -> float:
    """The value of an alpha tensor, which must hold exactly one number."""
    if a.numel() != 1:
        raise LoraMergeError(f"{where}: alpha has shape {tuple(a.shape)}; expected a scalar")
    return float(a.float().reshape(()))


def _fold_tucker(mid: torch.Tensor, down: torch.Tensor, where: str) -> torch.Tensor:
    """Fold a Tucker core into down: down'[a,i,h,w] = Σ_b mid[a,b,h,w]·down[b,i] (exact)."""
    r = down.shape[0]
    if down.dim() != 4 or tuple(down.shape[2:]) != (1, 1) or mid.dim() != 4 or tuple(mid.shape[:2]) != (r, r):
        raise LoraMergeError(f"{where}: Tucker mid {tuple(mid.shape)} does not fit down {tuple(down.shape)}")
    return torch.einsum("abhw,bi->aihw", mid, down[:, :, 0, 0])
