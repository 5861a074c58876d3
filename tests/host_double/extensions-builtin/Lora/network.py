"""Built-in Lora double, ``network``: the data classes (reference §2.2).

* ``NetworkOnDisk(name, filename)``: one LoRA file as listed — safetensors metadata (cached on the
  file's mtime), alias (``ss_output_name`` or the file name), hash (``sshs_model_hash``, else an
  already cached addnet hash; ``read_hash()`` computes it when still missing), version;
* ``Network(name, network_on_disk)``: a loaded LoRA — multipliers, ``dyn_dim`` and ``modules``
  (model layer name → ``NetworkModule``);
* ``NetworkModule(net, weights)``: one layer's part of a network, with the host's rules for which
  multiplier applies (text encoder or UNet, from the layer name), the alpha/rank scale and the final
  ΔW.  DoRA (``dora_scale``) is not modelled: such a module raises NotImplementedError on use.
"""
from __future__ import annotations

import enum
from collections import namedtuple

import torch
import torch.nn.functional as F

from modules import cache, errors, hashes, sd_models, shared

NetworkWeights = namedtuple("NetworkWeights", ["network_key", "sd_key", "w", "sd_module"])

# metadata keys the host lists first (its cards show them at the top); the rest keep file order
_LEADING_METADATA = ("ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_tag_frequency")


class SdVersion(enum.Enum):
    Unknown = 1
    SD1 = 2
    SD2 = 3
    SDXL = 4


def _lora_networks_module():
    import networks  # the host's own module object (see reference §2.10.1)
    return networks


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.is_safetensors = filename.lower().endswith(".safetensors")
        self.metadata = self._read_metadata() if self.is_safetensors else {}
        self.alias = self.metadata.get("ss_output_name", name)
        self.hash = None
        self.shorthash = None
        known = self.metadata.get("sshs_model_hash") or hashes.sha256_from_cache(
            filename, self.hash_title, use_addnet_hash=self.is_safetensors)
        self.set_hash(known or "")
        self.sd_version = self.detect_version()

    @property
    def hash_title(self) -> str:
        return f"lora/{self.name}"

    def _read_metadata(self) -> dict:
        try:
            found = cache.cached_data_for_file("safetensors-metadata", self.hash_title, self.filename,
                                               lambda: sd_models.read_metadata_from_safetensors(self.filename))
        except Exception as exc:
            errors.display(exc, f"reading lora {self.filename}")
            return {}
        found = found or {}
        leading = [k for k in _LEADING_METADATA if k in found]
        return {k: found[k] for k in leading + [k for k in found if k not in leading]}

    def detect_version(self) -> SdVersion:
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return SdVersion.SDXL
        if str(self.metadata.get("ss_v2", "")) == "True":
            return SdVersion.SD2
        return SdVersion.SD1 if self.metadata else SdVersion.Unknown

    def set_hash(self, value):
        """Record the full hash; a non-empty short hash is also entered in the hash lookup table."""
        self.hash = value
        self.shorthash = value[:12]
        if self.shorthash:
            _lora_networks_module().available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(hashes.sha256(self.filename, self.hash_title, use_addnet_hash=self.is_safetensors) or "")

    def get_alias(self):
        if shared.opts.lora_preferred_name == "Filename":
            return self.name
        if self.alias.lower() in _lora_networks_module().forbidden_network_aliases:
            return self.name
        return self.alias


class Network:
    """A loaded LoRA ("LoraModule" in the host's comments)."""

    def __init__(self, name, network_on_disk: NetworkOnDisk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None  # the name the prompt used: file name or alias


class ModuleType:
    def create_module(self, net: Network, weights: NetworkWeights) -> NetworkModule | None:
        return None


def _target_shape(layer):
    if isinstance(layer, torch.nn.MultiheadAttention):
        return layer.out_proj.weight.shape
    weight = getattr(layer, "weight", None)
    return None if weight is None else weight.shape


def _functional_op(layer):
    """(x, weight, bias) → the layer's own operation with another weight; None for other layer types."""
    if isinstance(layer, torch.nn.Conv2d):
        return lambda x, w, b: F.conv2d(x, w, b, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, torch.nn.Linear):
        return lambda x, w, b: F.linear(x, w, b)
    if isinstance(layer, torch.nn.LayerNorm):
        return lambda x, w, b: F.layer_norm(x, layer.normalized_shape, w, b, layer.eps)
    if isinstance(layer, torch.nn.GroupNorm):
        return lambda x, w, b: F.group_norm(x, layer.num_groups, w, b, layer.eps)
    return None


def _number(tensor):
    return None if tensor is None else tensor.item()


class NetworkModule:
    def __init__(self, net: Network, weights: NetworkWeights):
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        self.shape = _target_shape(self.sd_module)
        self.dim = None  # the rank, set by module types that have one
        self.bias = weights.w.get("bias")
        self.alpha = _number(weights.w.get("alpha"))
        self.scale = _number(weights.w.get("scale"))
        self.dora_scale = weights.w.get("dora_scale")

    def multiplier(self):
        """te_multiplier for text-encoder layers (``transformer`` early in the name), else unet_multiplier."""
        in_text_encoder = "transformer" in self.sd_key[:20]
        return self.network.te_multiplier if in_text_encoder else self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.alpha is not None and self.dim is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        """(ΔW · scale · multiplier in the target weight's shape, extra bias · multiplier)."""
        if self.bias is not None:  # a stored weight difference that comes on top of the product
            updown = updown.reshape(self.bias.shape) + self.bias.to(device=orig_weight.device, dtype=updown.dtype)
        updown = updown.reshape(output_shape)
        if updown.numel() == orig_weight.numel():
            updown = updown.reshape(orig_weight.shape)
        if self.dora_scale is not None:
            raise NotImplementedError("DoRA modules are not modelled by the host double")
        factor = self.multiplier()
        if ex_bias is not None:
            ex_bias = ex_bias * factor
        return updown * (self.calc_scale() * factor), ex_bias

    def calc_updown(self, target):
        raise NotImplementedError

    def forward(self, x, y):
        """Functional mode: the layer's operation with ΔW as its weight, added to the output y."""
        op = _functional_op(self.sd_module)
        if op is None:
            raise NotImplementedError(f"no functional path for {type(self.sd_module).__name__}")
        delta, extra_bias = self.calc_updown(self.sd_module.weight)
        return y + op(x, delta, extra_bias)
