"""Per generation pass: the ``<ljl:…>`` tags of the pass become host networks appended to
``networks.loaded_networks``.

Runs from the AlwaysVisible script's ``after_extra_networks_activate``, i.e. after the built-in
``lora`` handler has cleared and refilled ``loaded_networks`` for this pass (first pass and hires
pass alike).  Files come from a bounded cache (read once per file version); networks, and the files
of one generation, are kept for the last two passes, so batches and the hires pass reuse them, and
a Σ change only rescales one factor per module (runtime_state).  A bad tag is reported and skipped;
the generation goes on.
"""
from __future__ import annotations

from ..errors import LoraMergeError
from ..layout import layout_of
from ..lbw import parse_lbw
from ..sigma import parse_sigma
from . import bundled_ti, infotext, notify, runtime_state
from .host_lora import LoraUnavailable, lora_modules
from .lookup import find_on_disk
from .network_build import build_network, digest
from .tag_request import read_tag, tag_text

TAG = "ljl"


def state() -> runtime_state.RuntimeState:
    """The runtime's caches (the X/Y/Z axes read files through ``state().files`` too)."""
    return runtime_state.current()


def model_family(sd_model, fallback: str) -> str:
    if sd_model is None:
        return fallback
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    return "sd1"


def forget_conds(p) -> None:
    """Empty the host's cond caches (shared lists on the processing classes).  They are keyed on the
    prompt text, so when the same tags now mean other weights (a file rewritten or added since) the
    text-encoder conds would otherwise be stale.  All of them, whatever kind p is: an img2img pass
    has no hires caches, but the next txt2img pass would read them."""
    holders = [p]
    try:
        from modules import processing
        holders += [getattr(processing, name, None)
                    for name in ("StableDiffusionProcessing", "StableDiffusionProcessingTxt2Img")]
    except ImportError:
        pass
    for holder in holders:
        for attr in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
            cache = getattr(holder, attr, None)
            if isinstance(cache, list) and len(cache) == 2:
                cache[0] = cache[1] = None


def _network_for(p, host, sd_model, request, presets_box: list):
    state = runtime_state.current()
    entry = find_on_disk(host.networks, request.name)
    cached = state.files.get(entry.filename)
    layout = layout_of(cached.lora)
    per_rank = parse_sigma(request.sigma, layout)
    weights = None
    if request.lbw is not None:
        family = model_family(sd_model, cached.lora.family)
        if "," not in request.lbw and not presets_box:
            from ..presets import load_presets
            presets_box.append(load_presets())
        weights = parse_lbw(request.lbw, family, presets_box[0] if presets_box else None, x=request.x)
    key_digest = digest(cached.identity, per_rank, weights)
    key = (key_digest, request.name, request.te, request.unet)
    net = state.networks.get(key)
    if net is None:
        net = build_network(host, sd_model, entry, request.name, cached.lora, layout, per_rank, weights,
                            request.te, request.unet, key_digest, mtime=cached.identity[1] / 1e9,
                            templates=state.templates_for(host, sd_model, entry, cached, layout))
        net.bundle_embeddings, problems = bundled_ti.host_embeddings(host.networks, cached.lora.embeddings,
                                                                    entry.filename, request.name)
        for problem in problems:
            notify.warn(p, f"<ljl:{request.name}>: {problem}")
        state.networks[key] = net
    infotext.record(p, request.name, infotext.file_shorthash(entry, cached, state.shorthashes))
    return key, cached.identity[0], net


def activate(p, extra_network_data) -> None:
    """Append the networks of this pass's ``<ljl>`` tags to the host's ``loaded_networks``."""
    infotext.start_pass(p)
    params_list = list((extra_network_data or {}).get(TAG, []))
    if not params_list:
        return
    try:
        host = lora_modules()
    except LoraUnavailable as exc:
        notify.warn(p, f"<ljl> tags skipped: {exc}")
        return
    from modules import shared
    nets, keys, paths, presets_box = [], [], [], []
    for params in params_list:
        items = list(params.items)
        text = tag_text(items)
        try:
            key, path, net = _network_for(p, host, shared.sd_model, read_tag(items), presets_box)
        except LoraMergeError as exc:
            notify.warn(p, f"{text} skipped: {exc}")
            continue
        except Exception as exc:
            from modules import errors
            errors.report(f"[LJL] applying {text} failed", exc_info=True)
            notify.warn(p, f"{text} skipped: {type(exc).__name__}: {exc}")
            continue
        nets.append(net)
        keys.append(key)
        paths.append(path)
    host.networks.loaded_networks.extend(nets)
    bundled_ti.register(nets, shared.sd_model)
    state = runtime_state.current()
    if state.outcome_changed(tuple(tuple(map(str, params.items)) for params in params_list),
                             tuple(net.name for net in nets)):
        forget_conds(p)
    state.end_pass(getattr(shared.opts, "lora_in_memory_limit", 0), paths, keys, generation=p)
    infotext.write(p)


def name_layer_errors_by_tag() -> None:
    """The host counts a module that fails on its layer under the network's name and shows
    "Networks with errors: NAME (count)" under the image.  A tag's network is named NAME@ljl:DIGEST
    (see network_build), a new one for each Σ: count those under `<ljl:NAME>` instead."""
    try:
        errors = lora_modules().networks.extra_network_lora.errors
    except (LoraUnavailable, AttributeError):
        return
    if not isinstance(errors, dict):
        return
    for key in [k for k in errors if isinstance(k, str) and "@ljl:" in k]:
        label = f"<ljl:{key.partition('@ljl:')[0]}>"
        errors[label] = errors.get(label, 0) + errors.pop(key)
