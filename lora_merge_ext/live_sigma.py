"""Apply a (joined) LoRA to a live torch model and change Σ afterwards, like cloneofsimo's set_lora_diag.

Layers are found by kohya name: a module at path ``a.b.c`` matches LoRA module ``<prefix>a_b_c`` for the
prefixes lora_unet_, lora_te_, lora_te1_, lora_te2_ (or the exact name).  A forward hook adds
m·f·s·up(diag(v)·down(x)), so changing Σ only rewrites a small vector per layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .api import as_lora
from .errors import LoraMergeError
from .layout import layout_of
from .lbw import parse_lbw
from .lora_file import LoraFile
from .presets import as_presets
from .realize import module_coefficients, multiplier
from .sigma import parse_sigma, show

PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_", "")
HANDLE_ATTRIBUTE = "_ljl_live_lora"


class LiveLora:
    """Hooks holding one LoRA on a model; set_sigma() changes Σ, remove() takes the LoRA off."""

    def __init__(self, model: torch.nn.Module, lora, *, sigma="1", lbw: str | None = None,
                 te: float = 1.0, unet: float = 1.0, strict: bool = False, presets=None):
        """lora: a LoraFile, a file path or a merge's result.  Every input is checked before a hook is
        put on the model, so bad input changes nothing.  Layers the LoRA has no module for are left
        alone; modules with no layer in the model are listed in .unmatched (strict=True refuses them),
        so a UNet and a text encoder that are separate models each take their own apply_lora."""
        if not isinstance(model, torch.nn.Module):
            raise LoraMergeError(f"apply_lora: {type(model).__name__} is not a torch.nn.Module (give the UNet or "
                                 "text encoder module itself)")
        lora = as_lora(lora)
        self.lora, self.layout = lora, layout_of(lora)
        self.block_weights = parse_lbw(lbw, lora.family, as_presets(presets)) if lbw else None
        self.te, self.unet = multiplier(te, "te"), multiplier(unet, "unet")
        self.layers = _match_layers(model, lora)
        missing = sorted(set(lora.modules) - set(self.layers))
        if lora.modules and not self.layers:  # names of another convention (diffusers vs kohya…): say so
            raise LoraMergeError(f"no layer of the model matches a module of the LoRA (e.g. {missing[0]}); "
                                 "layers are found by kohya name: the model path a.b.c is module a_b_c")
        if strict and missing:
            raise LoraMergeError(f"{len(missing)} LoRA modules have no layer in the model, e.g. {missing[0]}")
        self.unmatched = missing
        self.coefficients: dict[str, torch.Tensor] = {}
        self._model, self._removed = model, False
        self.set_sigma(sigma)
        self._hooks = [layer.register_forward_hook(_LayerHook(self, name)) for name, layer in self.layers.items()]

    def set_sigma(self, sigma) -> None:
        """Σ as text (DESIGN §4 syntax), a number, or a list/tensor read like the same numbers written
        as text (one value: uniform; one per component; one per rank)."""
        if self._removed:
            raise LoraMergeError("this LoRA was removed from the model; apply it again with apply_lora")
        if not isinstance(sigma, (str, int, float, list, tuple)):  # a tensor or an array
            try:
                sigma = [float(v) for v in torch.as_tensor(sigma).detach().flatten()]
            except (TypeError, ValueError, RuntimeError):
                raise LoraMergeError(f"Σ vector {show(repr(sigma))} is not a list of numbers") from None
        per_rank = parse_sigma(sigma, self.layout)
        for name in self.layers:
            module = self.lora.modules[name]
            self.coefficients[name] = module_coefficients(module, self.layout, per_rank, self.block_weights,
                                                          self.te, self.unet)

    def remove(self) -> None:
        """Take the LoRA off the model (set_lora_diag on the model then says none is applied)."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._removed = [], True
        if getattr(self._model, HANDLE_ATTRIBUTE, None) is self:
            delattr(self._model, HANDLE_ATTRIBUTE)

    def add_delta(self, name: str, layer: torch.nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The layer's output plus module name's ΔW applied to its input x."""
        module = self.lora.modules[name]
        coef = self.coefficients[name].to(x.device, x.dtype)
        down, up = module.down.to(x.device, x.dtype), module.up.to(x.device, x.dtype)
        if isinstance(layer, torch.nn.Conv2d):
            down = down if down.dim() == 4 else down[:, :, None, None]
            up = up if up.dim() == 4 else up[:, :, None, None]
            h = F.conv2d(x, down, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
            return output + F.conv2d(h * coef[None, :, None, None], up)
        return output + F.linear(F.linear(x, down.reshape(down.shape[0], -1)) * coef, up.reshape(up.shape[0], -1))


class _LayerHook:
    """The forward hook of one layer: an object, not a closure, so that a model carrying a LoRA can be
    deep-copied (the copy gets its own LiveLora) and saved whole with torch.save."""

    def __init__(self, live: LiveLora, name: str):
        self.live, self.name = live, name

    def __call__(self, layer, inputs, output):
        return self.live.add_delta(self.name, layer, inputs[0], output)


def _match_layers(model: torch.nn.Module, lora: LoraFile) -> dict[str, torch.nn.Module]:
    """LoRA module name → the layer it applies to: the first module named like the layer (after a
    prefix) whose weight shape fits it (an SDXL file's lora_te1_ and lora_te2_ modules share names;
    one fits each text encoder).  A layer that modules are named for but none fits is refused."""
    by_name = {}
    for path, layer in model.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and path:
            flat, shape = path.replace(".", "_"), tuple(layer.weight.shape)
            named = [prefix + flat for prefix in PREFIXES if prefix + flat in lora.modules]
            fits = [n for n in named
                    if (lora.modules[n].out_features, lora.modules[n].flat_in) == (shape[0], math.prod(shape[1:]))]
            if fits:
                by_name[fits[0]] = layer
            elif named:
                raise LoraMergeError(f"LoRA module {named[0]} changes a {tuple(lora.modules[named[0]].weight_shape)} "
                                     f"weight, but layer {path} has {shape} (a LoRA for another model family?)")
    return by_name


def apply_lora(model: torch.nn.Module, lora, sigma="1", **options) -> LiveLora:
    """Put a LoRA (a LoraFile, a path or a merge's result) on a model with Σ (default all ones), in
    place of one applied before; returns the handle (also stored on the model).  options: lbw, te,
    unet, presets, strict (see LiveLora).  On bad input the model keeps what it had."""
    live = LiveLora(model, lora, sigma=sigma, **options)
    old = getattr(model, HANDLE_ATTRIBUTE, None)
    if old is not None:
        old.remove()
    setattr(model, HANDLE_ATTRIBUTE, live)
    return live


def set_lora_diag(model_or_handle, sigma) -> None:
    """Change Σ of the LoRA applied with apply_lora (the model or the handle)."""
    live = model_or_handle
    if not isinstance(live, LiveLora):
        live = getattr(model_or_handle, HANDLE_ATTRIBUTE, None)
    if live is None:
        raise LoraMergeError("no LoRA was applied to this model; call apply_lora first")
    live.set_sigma(sigma)
