"""A host ``network.Network`` for one ``<ljl:…>`` tag: the file's modules as the Lora extension's own
``NetworkModuleLora`` objects, with Σ, the lbw block factor and the module's alpha/rank scale folded
into the up factor, so the host applies ΔW = m·(s·U·diag(v)·b)·D with m its own ``te_multiplier`` /
``unet_multiplier``.

The host's modules are built once per file version and model (``build_templates``, through the
host's constructor, which also picks the layer types, dtype and device); a new Σ then only makes a
shallow copy of each with a new up weight.  The network's ``name`` carries a digest of the file
version, Σ and lbw, so the host's per-layer cache key ``(name, te, unet, dyn)`` changes whenever
any of them does.
"""
from __future__ import annotations

import copy
import hashlib

import torch

from ..diag_fold import scaled_up
from ..realize import module_coefficients
from .layer_match import layer_mapping, match_layer


def digest(identity: tuple, per_rank: list[float], block_weights: dict | None) -> str:
    """Short hex digest of what the merged weights depend on besides te/unet."""
    lbw = sorted(block_weights.items()) if block_weights else None
    text = repr((identity, [float(v) for v in per_rank], lbw))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def network_name(mentioned_name: str, key_digest: str) -> str:
    return f"{mentioned_name}@ljl:{key_digest}"


def build_templates(host, sd_model, entry, lora) -> dict:
    """{module name: host NetworkModuleLora of the plain factors (no alpha)} for the model's layers."""
    networks, network, network_lora = host.networks, host.network, host.network_lora
    owner = network.Network(f"{entry.name}@ljl:template", entry)
    mapping = layer_mapping(networks, sd_model)
    is_sd2 = "model_transformer_resblocks" in mapping
    templates = {}
    for name, module in lora.modules.items():
        target = match_layer(networks, mapping, name, is_sd2)
        if target is None:
            continue
        sd_key, layer = target
        weights = network.NetworkWeights(network_key=f"{name}.lora_down.weight", sd_key=sd_key,
                                         w={"lora_up.weight": module.up, "lora_down.weight": module.down},
                                         sd_module=layer)
        templates[name] = network_lora.NetworkModuleLora(owner, weights)
    return templates


def _with_up(template, up: torch.Tensor, net):
    """A shallow copy of a host module whose up layer has weight `up` and which belongs to `net`."""
    layer = template.up_model
    new_layer = copy.copy(layer)
    new_layer._parameters = type(layer._parameters)(layer._parameters)
    new_layer._parameters["weight"] = torch.nn.Parameter(
        up.reshape(layer.weight.shape).to(device=layer.weight.device, dtype=layer.weight.dtype), requires_grad=False)
    module = copy.copy(template)
    module.network = net
    module.up_model = new_layer
    return module


def build_network(host, sd_model, entry, mentioned_name: str, lora, layout, per_rank, block_weights,
                  te: float, unet: float, key_digest: str, mtime: float | None = None, templates: dict | None = None):
    """A Network ready to append to ``networks.loaded_networks`` (modules whose factor is all 0 left out)."""
    if templates is None:
        templates = build_templates(host, sd_model, entry, lora)
    net = host.network.Network(network_name(mentioned_name, key_digest), entry)
    net.mentioned_name = mentioned_name
    net.te_multiplier = te
    net.unet_multiplier = unet
    net.dyn_dim = None
    net.mtime = mtime
    for name, template in templates.items():
        module = lora.modules[name]
        up = scaled_up(module, module_coefficients(module, layout, per_rank, block_weights))
        if up is not None:
            net.modules[template.sd_key] = _with_up(template, up, net)
    return net
