"""Built-in Lora double, ``networks``: the module-level state, listing LoRA files, loading them onto
the model's layers, and merging the loaded ones into the layers' weights (reference §2.4).

What the double keeps from the host, because this project's tests depend on it:

* ``load_networks`` empties ``loaded_networks`` on every call and refills it in the order of
  ``names``; a network stays in ``networks_in_memory`` (bounded by ``lora_in_memory_limit``) and is
  reloaded when its file is newer than its ``mtime``; names not found give the comment
  "Lora not found: …".
* Merging is lazy, inside the patched layer forwards: a layer compares the tuple
  ``(name, te_multiplier, unet_multiplier, dyn_dim)`` of every loaded network with the tuple it
  merged last (``network_current_names``) and only on a difference restores its backed-up weights
  and adds every loaded network's ΔW again.  Only ``RuntimeError`` from a module is caught (counted
  per network in ``extra_network_lora.errors``).
* ``lora_functional``: Linear / Conv2d / GroupNorm / LayerNorm layers add each module's output in
  their forward instead; MultiheadAttention always merges.

* Bundled embeddings (``bundle_emb.NAME.…``) become textual-inversion embeddings of the network;
  ``load_networks`` first unregisters those of the networks loaded before, then registers those of
  each network it loads, unless the name is already taken by an embedding from the embeddings
  folder or the shape does not fit (v1.10.1 networks.py:181-199, 258-265, 282-290, 343-356).

Not modelled: module types other than plain LoRA/LoCon, SD3 keys, FP8 weight
copies, the AddNet infotext fields.  The patched forwards are built by ``layer_replacements`` rather
than kept as one named function per layer class.  Not in the reference, kept as the double's
choice: an attention layer is merged only when its q, k, v and out projections all have modules
(otherwise it is left as it is), and a file that cannot be read while listing is reported and left
out of the list.
"""
from __future__ import annotations

import logging
import os
import re

import torch

import network
import network_lora
from modules import devices, errors, sd_hijack, sd_models, shared
from modules.textual_inversion import textual_inversion

module_types = [network_lora.ModuleTypeLora()]

LORA_FILE_TYPES = (".pt", ".ckpt", ".safetensors")


# --- layer names: kohya / diffusers → the model's (compvis) names ------------------------------

_RESNET_PARTS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                 "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}
_OPENCLIP_PARTS = (("mlp_fc1", "mlp_c_fc"), ("mlp_fc2", "mlp_c_proj"), ("self_attn", "attn"))


def _openclip(tail: str) -> str:
    for clip_name, openclip_name in _OPENCLIP_PARTS:
        tail = tail.replace(clip_name, openclip_name)
    return tail


def _block_part(kind: str, tail: str) -> str:
    return _RESNET_PARTS.get(tail, tail) if kind == "resnets" else tail


def _unet_name(rest: str) -> str | None:
    """The compvis name under ``diffusion_model_`` of a diffusers UNet module name (after ``lora_unet_``)."""
    m = re.fullmatch(r"(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        side, block, kind, j, tail = m[1], int(m[2]), m[3], int(m[4]), m[5]
        index = 1 + 3 * block + j if side == "down" else 3 * block + j
        group = "input_blocks" if side == "down" else "output_blocks"
        return f"{group}_{index}_{1 if kind == 'attentions' else 0}_{_block_part(kind, tail)}"
    m = re.fullmatch(r"mid_block_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        position = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block_{position}_{_block_part(m[1], m[3])}"
    m = re.fullmatch(r"down_blocks_(\d+)_downsamplers_0_conv", rest)
    if m:
        return f"input_blocks_{3 * int(m[1]) + 3}_0_op"
    m = re.fullmatch(r"up_blocks_(\d+)_upsamplers_0_conv", rest)
    if m:
        block = int(m[1])
        return f"output_blocks_{3 * block + 2}_{2 if block else 1}_conv"
    m = re.fullmatch(r"time_embedding_linear_(\d+)(.*)", rest)
    if m:
        return f"time_embed_{2 * int(m[1]) - 2}{m[2]}"
    for diffusers_name, compvis_name in (("conv_in", "input_blocks_0_0"), ("conv_out", "out_2")):
        if rest.startswith(diffusers_name):
            return compvis_name + rest[len(diffusers_name):]
    return None


def convert_diffusers_name_to_compvis(key, is_sd2):
    """The model layer name for a kohya module name; a name it does not know comes back unchanged."""
    if key.startswith("lora_unet_"):
        found = _unet_name(key[len("lora_unet_"):])
        return key if found is None else f"diffusion_model_{found}"
    m = re.fullmatch(r"lora_te(2?)_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        layer, tail = m[2], m[3]
        if m[1] == "2":
            return f"1_model_transformer_resblocks_{layer}_{_openclip(tail)}"
        if is_sd2:
            return f"model_transformer_resblocks_{layer}_{_openclip(tail)}"
        return f"transformer_text_model_encoder_layers_{layer}_{tail}"
    return key


def _name_layers(mapping: dict, root: torch.nn.Module, prefix: str = "") -> None:
    for dotted, layer in root.named_modules():
        if dotted:
            flat = prefix + dotted.replace(".", "_")
            mapping[flat] = layer
            layer.network_layer_name = flat


def assign_network_names_to_compvis_modules(sd_model):
    """Build ``sd_model.network_layer_mapping`` (flat layer name → layer) and name every layer.

    SDXL text encoders come from ``conditioner.embedders[i].wrapped`` with the prefix ``"{i}_"``;
    SD1/SD2's from ``cond_stage_model.wrapped`` (or ``cond_stage_model``) unprefixed; the UNet
    from ``sd_model.model`` (names starting ``diffusion_model_``)."""
    mapping = {}
    if getattr(sd_model, "is_sdxl", False):
        for i, embedder in enumerate(sd_model.conditioner.embedders):
            wrapped = getattr(embedder, "wrapped", None)
            if wrapped is not None:
                _name_layers(mapping, wrapped, f"{i}_")
    else:
        encoder = sd_model.cond_stage_model
        _name_layers(mapping, getattr(encoder, "wrapped", encoder))
    _name_layers(mapping, sd_model.model)
    sd_model.network_layer_mapping = mapping


# --- loading a file onto the layers -----------------------------------------------------------

_PROJECTION = re.compile(r"(.+)_[qkv]_proj")


def _find_layer(mapping: dict, file_name: str, is_sd2: bool):
    """(layer name used as the module key, layer) for a module name of a file, or None."""
    converted = convert_diffusers_name_to_compvis(file_name, is_sd2)
    if converted in mapping:
        return converted, mapping[converted]
    projection = _PROJECTION.fullmatch(converted)
    if projection and projection[1] in mapping:  # q/k/v of a MultiheadAttention: the key keeps its suffix
        return converted, mapping[projection[1]]
    retries = []
    if "lora_unet" in file_name:  # kohya SDXL files already use the compvis block names
        retries.append(file_name.replace("lora_unet", "diffusion_model"))
    elif "lora_te1_text_model" in file_name:
        retries += [file_name.replace("lora_te1_text_model", "0_transformer_text_model"),
                    file_name.replace("lora_te1_text_model", "transformer_text_model")]
    for candidate in retries:
        if candidate in mapping:
            return candidate, mapping[candidate]
    return None


def _module_for(net, weights):
    for module_type in module_types:
        made = module_type.create_module(net, weights)
        if made is not None:
            return made
    accepted_by = ", ".join(type(t).__name__ for t in module_types)
    raise AssertionError(f"no module type ({accepted_by}) accepts the keys {', '.join(weights.w)} "
                         f"of {weights.network_key}")


class BundledTIHash(str):
    """What a bundled embedding shows as its hash in the infotext: the network's name, or nothing."""

    def __init__(self, hash_str):
        self.hash = hash_str

    def __str__(self):
        return self.hash if shared.opts.lora_bundled_ti_to_infotext else ""


def _add_bundled_part(found: dict, part: str, tensor) -> None:
    emb_name, vec_name = part.split(".", 1)
    data = found.setdefault(emb_name, {})
    if vec_name.split(".")[0] == "string_to_param":
        data["string_to_param"] = {vec_name.split(".", 1)[1]: tensor}
    else:
        data[vec_name] = tensor


def load_network(name, network_on_disk):
    net = network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    tensors = sd_models.read_state_dict(network_on_disk.filename)
    model = shared.sd_model
    if getattr(model, "network_layer_mapping", None) is None:  # the host's fall-back
        assign_network_names_to_compvis_modules(model)
    mapping = model.network_layer_mapping
    is_sd2 = any(k.startswith("model_transformer_resblocks") for k in mapping)
    per_layer, unmatched, bundled = {}, [], {}
    for file_key, tensor in tensors.items():
        module_name, _, part = file_key.partition(".")
        if module_name == "bundle_emb":
            _add_bundled_part(bundled, part, tensor)
            continue
        found = _find_layer(mapping, module_name, is_sd2)
        if found is None:
            unmatched.append(file_key)
            continue
        sd_key, layer = found
        if sd_key not in per_layer:
            per_layer[sd_key] = network.NetworkWeights(network_key=file_key, sd_key=sd_key, w={}, sd_module=layer)
        per_layer[sd_key].w[part] = tensor
    for sd_key, weights in per_layer.items():
        net.modules[sd_key] = _module_for(net, weights)
    for emb_name, data in bundled.items():
        embedding = textual_inversion.create_embedding_from_data(
            data, emb_name, filename=network_on_disk.filename + "/" + emb_name)
        embedding.loaded = None
        embedding.shorthash = BundledTIHash(name)
        net.bundle_embeddings[emb_name] = embedding
    if unmatched:
        logging.debug("Network %s: no layer for %s", network_on_disk.filename, unmatched)
    return net


def purge_networks_from_memory():
    """Drop the least recently loaded networks beyond ``lora_in_memory_limit``."""
    surplus = len(networks_in_memory) - max(0, int(shared.opts.lora_in_memory_limit))
    for name in list(networks_in_memory)[:max(0, surplus)]:
        del networks_in_memory[name]
    devices.torch_gc()


def _on_disk(name):
    """The listed file for a prompt name: by alias or file name, by file name only for a forbidden alias."""
    if name.lower() in forbidden_network_aliases:
        return available_networks.get(name)
    return available_network_aliases.get(name)


def _locate(names) -> list:
    entries = [_on_disk(n) for n in names]
    if None in entries:
        update_available_networks_by_names([n for n, e in zip(names, entries) if e is None])
        entries = [_on_disk(n) for n in names]
    if None in entries:
        list_available_networks()
        entries = [_on_disk(n) for n in names]
    return entries


def _register_bundled(net) -> None:
    emb_db = sd_hijack.model_hijack.embedding_db
    for emb_name, embedding in net.bundle_embeddings.items():
        if embedding.loaded is None and emb_name in emb_db.word_embeddings:
            logging.warning("bundled embedding %s skipped: an embedding of the folder has the name", emb_name)
            continue
        embedding.loaded = False
        if emb_db.expected_shape == -1 or emb_db.expected_shape == embedding.shape:
            embedding.loaded = True
            emb_db.register_embedding(embedding, shared.sd_model)
        else:
            emb_db.skipped_embeddings[net.name] = embedding


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    emb_db = sd_hijack.model_hijack.embedding_db
    reusable = {net.name: net for net in loaded_networks if net.name in names}
    for net in loaded_networks:
        for emb_name, embedding in net.bundle_embeddings.items():
            if embedding.loaded:
                emb_db.register_embedding_by_name(None, shared.sd_model, emb_name)
    loaded_networks.clear()
    not_found = []
    for i, (name, entry) in enumerate(zip(names, _locate(names))):
        if entry is None:
            not_found.append(name)
            continue
        net = reusable.get(name) or networks_in_memory.get(name)
        if net is None or os.path.getmtime(entry.filename) > net.mtime:
            try:
                net = load_network(name, entry)
            except Exception as exc:
                errors.display(exc, f"loading network {entry.filename}")
                continue
            networks_in_memory.pop(name, None)
            networks_in_memory[name] = net  # most recently loaded last
        net.mentioned_name = name
        entry.read_hash()
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)
        _register_bundled(net)
    if not_found:
        notice = "Lora not found: " + ", ".join(not_found)
        sd_hijack.model_hijack.comments.append(notice)
        if shared.opts.lora_not_found_warning_console:
            print(f"\n{notice}\n")
    purge_networks_from_memory()


# --- merging into the layers --------------------------------------------------------------------

def _weight_slots(layer) -> list:
    """(object, attribute) of every weight a layer's merge changes."""
    if isinstance(layer, torch.nn.MultiheadAttention):
        return [(layer, "in_proj_weight"), (layer.out_proj, "weight")]
    return [(layer, "weight")]


def _bias_slot(layer):
    return (layer.out_proj, "bias") if isinstance(layer, torch.nn.MultiheadAttention) else (layer, "bias")


def _cpu_copy(tensor):
    return None if tensor is None else tensor.detach().to(devices.cpu, copy=True)


def _ensure_backups(layer, merged_before: bool) -> None:
    """Back up weights and bias the first time anything is to be merged into the layer."""
    if getattr(layer, "network_bias_backup", None) is None:
        owner, attr = _bias_slot(layer)
        bias = getattr(owner, attr, None)
        if bias is not None and merged_before:
            raise RuntimeError(f"{layer.network_layer_name}: bias was changed and has no backup")
        layer.network_bias_backup = _cpu_copy(bias)
    if getattr(layer, "network_weights_backup", None) is None:
        if merged_before and not _may_lack_weight(layer):
            raise RuntimeError(f"{layer.network_layer_name}: weights were changed and have no backup")
        layer.network_weights_backup = tuple(_cpu_copy(getattr(o, a, None)) for o, a in _weight_slots(layer))


def _may_lack_weight(layer) -> bool:
    return isinstance(layer, torch.nn.LayerNorm) and not layer.elementwise_affine


def network_restore_weights_from_backup(layer):
    saved = getattr(layer, "network_weights_backup", None)
    if saved is not None:
        with torch.no_grad():
            for (owner, attr), copy in zip(_weight_slots(layer), saved):
                if copy is not None:
                    getattr(owner, attr).copy_(copy)
    if saved is not None or getattr(layer, "network_bias_backup", None) is not None:
        owner, attr = _bias_slot(layer)
        bias_copy = getattr(layer, "network_bias_backup", None)
        if bias_copy is None:
            setattr(owner, attr, None)
        else:
            with torch.no_grad():
                getattr(owner, attr).copy_(bias_copy)


def _add_bias(owner, extra):
    if extra is None:
        return
    if owner.bias is None:
        owner.bias = torch.nn.Parameter(extra.to(owner.weight.dtype), requires_grad=False)
    else:
        owner.bias += extra.to(owner.bias.dtype)


def _merge_plain(layer, module) -> None:
    weight = layer.weight
    delta, extra_bias = module.calc_updown(weight)
    if weight.dim() == 4 and weight.shape[1] == 9 and delta.shape[1] == 4:  # inpainting UNet input conv
        delta = torch.cat([delta, delta.new_zeros(delta.shape[0], 5, *delta.shape[2:])], dim=1)
    weight.copy_((weight.to(delta.dtype) + delta).to(weight.dtype))
    _add_bias(layer, extra_bias)


def _merge_attention(layer, net, name) -> None:
    parts = [net.modules.get(f"{name}_{p}_proj") for p in ("q", "k", "v", "out")]
    if any(part is None for part in parts):
        return
    thirds = layer.in_proj_weight.chunk(3, dim=0)
    in_delta = torch.cat([module.calc_updown(third)[0] for module, third in zip(parts[:3], thirds)])
    out_delta, extra_bias = parts[3].calc_updown(layer.out_proj.weight)
    layer.in_proj_weight += in_delta.to(layer.in_proj_weight.dtype)
    layer.out_proj.weight += out_delta.to(layer.out_proj.weight.dtype)
    _add_bias(layer.out_proj, extra_bias)


def _count_failure(net, name, exc) -> None:
    logging.debug("Network %s layer %s: %s", net.name, name, exc)
    if extra_network_lora is not None:
        extra_network_lora.errors[net.name] = extra_network_lora.errors.get(net.name, 0) + 1


def network_apply_weights(layer):
    """Bring a layer's weights up to date with ``loaded_networks`` (see the module docstring)."""
    name = getattr(layer, "network_layer_name", None)
    if name is None:
        return
    wanted = tuple((net.name, net.te_multiplier, net.unet_multiplier, net.dyn_dim) for net in loaded_networks)
    current = getattr(layer, "network_current_names", ())
    if wanted:
        _ensure_backups(layer, merged_before=bool(current))
    if current == wanted:
        return
    network_restore_weights_from_backup(layer)
    attention = isinstance(layer, torch.nn.MultiheadAttention)
    for net in loaded_networks:
        try:
            with torch.no_grad():
                if attention:
                    _merge_attention(layer, net, name)
                elif name in net.modules and hasattr(layer, "weight"):
                    _merge_plain(layer, net.modules[name])
        except RuntimeError as exc:
            _count_failure(net, name, exc)
    layer.network_current_names = wanted


def network_reset_cached_weight(layer):
    layer.network_current_names = ()
    layer.network_weights_backup = None
    layer.network_bias_backup = None


def network_forward(org_module, input, original_forward):
    """Functional mode: the layer's own output (original weights) plus each loaded module's output."""
    if not loaded_networks:
        return original_forward(org_module, input)
    network_restore_weights_from_backup(org_module)
    network_reset_cached_weight(org_module)
    output = original_forward(org_module, input)
    name = getattr(org_module, "network_layer_name", None)
    for net in loaded_networks:
        module = net.modules.get(name)
        if module is not None:
            output = module.forward(input, output)
    return output


def layer_replacements(kind: str):
    """(forward, _load_from_state_dict) replacements for torch.nn.<kind>; they call the originals
    kept on ``originals`` as ``<kind>_forward`` / ``<kind>_load_state_dict``."""
    functional_possible = kind != "MultiheadAttention"

    def forward(self, *args, **kwargs):
        original = getattr(originals, f"{kind}_forward")
        if functional_possible and shared.opts.lora_functional:
            return network_forward(self, args[0], original)
        network_apply_weights(self)
        return original(self, *args, **kwargs)

    def load_from_state_dict(self, *args, **kwargs):
        network_reset_cached_weight(self)
        return getattr(originals, f"{kind}_load_state_dict")(self, *args, **kwargs)

    forward.__name__ = f"network_{kind}_forward"
    load_from_state_dict.__name__ = f"network_{kind}_load_state_dict"
    return forward, load_from_state_dict


# --- listing the LoRA folders -------------------------------------------------------------------

def _lora_paths():
    for folder in (shared.cmd_opts.lora_dir, shared.cmd_opts.lyco_dir_backcompat):
        if not folder or not os.path.isdir(folder):
            continue
        for root, _dirs, files in os.walk(folder, followlinks=True):
            for file_name in sorted(files):
                path = os.path.join(root, file_name)
                if os.path.splitext(file_name)[1].lower() in LORA_FILE_TYPES and not os.path.isdir(path):
                    yield path


def process_network_files(names=None):
    """List the files (only those whose base name is in `names`, when given) into the tables."""
    only = set(names) if names else None
    for path in _lora_paths():
        name = os.path.splitext(os.path.basename(path))[0]
        if only is not None and name not in only:
            continue
        try:
            entry = network.NetworkOnDisk(name, path)
        except OSError:
            errors.report(f"Failed to list network {name} from {path}", exc_info=True)
            continue
        holder = available_network_aliases.get(entry.alias)
        if holder is not None and holder.filename != path:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_networks[name] = entry
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def update_available_networks_by_names(names):
    process_network_files(names)


def list_available_networks():
    for table in (available_networks, available_network_aliases, forbidden_network_aliases,
                  available_network_hash_lookup):
        table.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    if shared.cmd_opts.lora_dir:
        os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()


def infotext_pasted(infotext, params):
    """The host turns old "AddNet Model N" fields into <lora> text here; not modelled."""


originals = None            # lora_patches.LoraPatches, set by scripts/lora_script.py
extra_network_lora = None   # the ExtraNetworkLora, set in before_ui
available_networks = {}
available_network_aliases = {}
loaded_networks = []
loaded_bundle_embeddings = {}
networks_in_memory = {}
available_network_hash_lookup = {}
forbidden_network_aliases = {}

list_available_networks()
