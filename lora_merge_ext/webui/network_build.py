"""A host ``network.Network`` for one ``<ljl:…>`` tag: the joined file's modules as the Lora extension's
own ``NetworkModuleLora`` objects, with Σ, the lbw block factor and the module's alpha/rank scale
folded into the up factor (so the host applies ΔW = m·s·U·diag(v)·D, m = te or unet multiplier,
which stay the host's own ``te_multiplier`` / ``unet_multiplier``).

The network's ``name`` carries a digest of the file version, Σ and lbw, so the host's per-layer
cache key ``(name, te, unet, dyn)`` changes whenever any of them does.
"""
from __future__ import annotations

import hashlib

from ..diag_fold import fold_into_up
from ..realize import module_coefficients
from .layer_match import layer_mapping, match_layer


def digest(identity: tuple, per_rank: list[float], block_weights: dict | None) -> str:
    """Short hex digest of what the merged weights depend on besides te/unet."""
    lbw = sorted(block_weights.items()) if block_weights else None
    text = repr((identity, [float(v) for v in per_rank], lbw))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def network_name(mentioned_name: str, key_digest: str) -> str:
    return f"{mentioned_name}@ljl:{key_digest}"


def build_network(host, sd_model, entry, mentioned_name: str, lora, layout, per_rank, block_weights,
                  te: float, unet: float, key_digest: str, mtime: float | None = None):
    """A Network ready to append to ``networks.loaded_networks`` (modules of all-zero Σ left out)."""
    networks, network, network_lora = host.networks, host.network, host.network_lora
    net = network.Network(network_name(mentioned_name, key_digest), entry)
    net.mentioned_name = mentioned_name
    net.te_multiplier = te
    net.unet_multiplier = unet
    net.dyn_dim = None
    net.mtime = mtime
    mapping = layer_mapping(networks, sd_model)
    is_sd2 = "model_transformer_resblocks" in mapping
    for name, module in lora.modules.items():
        target = match_layer(networks, mapping, name, is_sd2)
        if target is None:
            continue
        factors = fold_into_up(module, module_coefficients(module, layout, per_rank, block_weights))
        if factors is None:
            continue
        down, up = factors
        sd_key, layer = target
        weights = network.NetworkWeights(network_key=f"{name}.lora_down.weight", sd_key=sd_key,
                                         w={"lora_up.weight": up, "lora_down.weight": down}, sd_module=layer)
        net.modules[sd_key] = network_lora.NetworkModuleLora(net, weights)
    return net
