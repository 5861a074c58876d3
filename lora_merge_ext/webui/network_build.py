"""A host ``network.Network`` for one ``<ljl:…>`` tag: the file's modules as the Lora extension's own
``NetworkModuleLora`` objects, with Σ, the lbw block factor and the module's alpha/rank scale folded
into one factor, so the host applies ΔW = m·U·diag(s·b·v)·D with m its own ``te_multiplier`` /
``unet_multiplier`` (the same ΔW as the core's ``realize``).

The host's modules are built once per file version and model (``build_templates``, through the
host's constructor, which also picks the layer types, dtype and device); a new Σ then only makes a
shallow copy of each with a new weight for the smaller of its two factors (diag(c) scales the
columns of U or, the same product, the rows of D).  The network's ``name`` carries a digest of the file
version, Σ and lbw, so the host's per-layer cache key ``(name, te, unet, dyn)`` changes whenever
any of them does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..attention_group import kept_with_siblings
from ..errors import LoraMergeError
from ..finite_check import block_is_finite
from ..lbw import lbw_factor
from .layer_match import layer_mapping, match_layer


def digest(identity: tuple, per_rank: list[float], block_weights: dict | None) -> str:
    """Short hex digest of what the merged weights depend on besides te/unet."""
    lbw = sorted(block_weights.items()) if block_weights else None
    text = repr((identity, [float(v) for v in per_rank], lbw))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def network_name(mentioned_name: str, key_digest: str) -> str:
    return f"{mentioned_name}@ljl:{key_digest}"


@dataclass
class ModuleTemplate:
    """One file module on one model layer: the host's module of the plain factors, and where the
    module's ranks sit in a per-rank Σ vector (see JoinLayout.module_vector)."""

    name: str
    host_module: object           # network_lora.NetworkModuleLora (no alpha: scale folded per Σ)
    side: str                     # "up" or "down": the smaller factor, which carries diag(c)
    factor: torch.Tensor          # that factor of the file, float32
    scale: float                  # alpha / rank, or 1
    spans: list                   # [(start, stop)] of per-rank entries, in the module's rank order
    index: torch.Tensor | None    # those positions as an index, None when they are 0..total-1


def _spans(layout, module_name: str) -> list[tuple[int, int]]:
    spans, offset = [], 0
    for comp, r in zip(layout.components, layout.ranks_of(module_name)):
        if r:
            spans.append((offset, offset + r))
        offset += comp.rank
    return spans


def build_templates(host, sd_model, entry, lora, layout) -> list[ModuleTemplate]:
    """The host modules of a file's plain factors, for the layers the model has."""
    networks, network, network_lora = host.networks, host.network, host.network_lora
    owner = network.Network(f"{entry.name}@ljl:template", entry)
    mapping = layer_mapping(networks, sd_model)
    is_sd2 = "model_transformer_resblocks" in mapping
    templates = []
    for name, module in lora.modules.items():
        target = match_layer(networks, mapping, name, is_sd2)
        if target is None:
            continue
        sd_key, layer = target
        weights = network.NetworkWeights(network_key=f"{name}.lora_down.weight", sd_key=sd_key,
                                         w={"lora_up.weight": module.up, "lora_down.weight": module.down},
                                         sd_module=layer)
        spans = _spans(layout, name)
        whole = spans == [(0, layout.total_rank)]
        index = None if whole else torch.cat([torch.arange(a, b) for a, b in spans])
        side = "up" if module.up.numel() <= module.down.numel() else "down"
        factor = (module.up if side == "up" else module.down).to(torch.float32).contiguous()
        templates.append(ModuleTemplate(name, network_lora.NetworkModuleLora(owner, weights), side, factor,
                                        module.scale, spans, index))
    return templates


def _with_factor(template, side: str, weight: torch.Tensor, net):
    """A shallow copy of a host module whose `side` layer ("up"/"down") has weight `weight` and which
    belongs to `net`; the other layer is shared with the template (the host only reads it)."""
    attr = f"{side}_model"
    layer = getattr(template, attr)
    new_layer = object.__new__(type(layer))
    new_layer.__dict__ = layer.__dict__.copy()
    new_layer._parameters = type(layer._parameters)(layer._parameters)
    new_layer._parameters["weight"] = torch.nn.Parameter(
        weight.reshape(layer.weight.shape).to(device=layer.weight.device, dtype=layer.weight.dtype),
        requires_grad=False)
    module = object.__new__(type(template))
    module.__dict__ = template.__dict__.copy()
    module.network = net
    setattr(module, attr, new_layer)
    return module


def build_network(host, sd_model, entry, mentioned_name: str, lora, layout, per_rank, block_weights,
                  te: float, unet: float, key_digest: str, mtime: float | None = None, templates=None):
    """A Network ready to append to ``networks.loaded_networks`` (modules whose factor is all 0 left out,
    except attention projections beside a live one)."""
    if templates is None:
        templates = build_templates(host, sd_model, entry, lora, layout)
    net = host.network.Network(network_name(mentioned_name, key_digest), entry)
    net.mentioned_name = mentioned_name
    net.te_multiplier = te
    net.unet_multiplier = unet
    net.dyn_dim = None
    net.mtime = mtime
    values = [float(v) for v in per_rank]
    sigma = torch.tensor(values, dtype=torch.float32)
    factors = {t.name: lbw_factor(block_weights, t.name) * t.scale for t in templates}
    live = [t.name for t in templates if factors[t.name] != 0 and any(any(values[a:b]) for a, b in t.spans)]
    wanted = kept_with_siblings(factors, live)  # a zero q/k/v/out beside live ones stays: the host needs all four
    for t in templates:
        if t.name not in wanted:
            continue
        factor = factors[t.name]
        c = (sigma if t.index is None else sigma[t.index]) * factor
        if t.side == "up":
            scaled = t.factor * c.reshape((1, -1) + (1,) * (t.factor.dim() - 2))
        else:
            scaled = t.factor * c.reshape((-1,) + (1,) * (t.factor.dim() - 1))
        module = _with_factor(t.host_module, t.side, scaled, net)
        weight = getattr(module, f"{t.side}_model").weight.detach()
        if not block_is_finite(weight):
            raise LoraMergeError(f"Σ, lbw and x give module {t.name} values too large for the model's "
                                 f"{str(weight.dtype).replace('torch.', '')}; use smaller values")
        net.modules[t.host_module.sd_key] = module
    return net
