"""Per generation pass: the ``<ljl:…>`` tags of the pass become host networks appended to
``networks.loaded_networks``.

Runs from the AlwaysVisible script's ``after_extra_networks_activate``, i.e. after the built-in
``lora`` handler has cleared and refilled ``loaded_networks`` for this pass (first pass and hires
pass alike).  Files come from a bounded cache (read once per file version); built networks are
kept for the last two passes, so batches and the hires pass reuse them and a Σ change only
rebuilds factors.  A bad tag is reported and skipped; the generation goes on.
"""
from __future__ import annotations

from collections import OrderedDict

from ..errors import LoraMergeError
from ..layout import layout_of
from ..lbw import parse_lbw
from ..sigma import parse_sigma
from . import infotext, notify
from .file_cache import LoraFileCache
from .host_lora import LoraUnavailable, lora_modules
from .lookup import find_on_disk
from .network_build import build_network, build_templates, digest
from .tag_request import read_tag, tag_text

TAG = "ljl"
MAX_REMEMBERED_PROMPTS = 256


class RuntimeState:
    def __init__(self):
        self.files = LoraFileCache()
        self.networks: "OrderedDict[tuple, object]" = OrderedDict()
        self.previous_keys: set = set()
        self.shorthashes: dict = {}
        self.templates: dict = {}  # file identity → (the model's layer mapping, host modules)
        self.outcomes: "OrderedDict[tuple, tuple]" = OrderedDict()  # tag items → network names applied

    def outcome_changed(self, tags: tuple, names: tuple) -> bool:
        """Whether the same tag text gave other networks last time (file rewritten, added, fixed)."""
        changed = self.outcomes.get(tags, names) != names
        self.outcomes[tags] = names
        self.outcomes.move_to_end(tags)
        while len(self.outcomes) > MAX_REMEMBERED_PROMPTS:
            self.outcomes.popitem(last=False)
        return changed

    def keep_networks(self, used: list) -> None:
        """Keep the networks of this pass and of the one before (first pass / hires pass alternate)."""
        keep = set(used) | self.previous_keys
        for key in [k for k in self.networks if k not in keep]:
            del self.networks[key]
        self.previous_keys = set(used)


_state = RuntimeState()


def state() -> RuntimeState:
    return _state


def reset() -> None:
    """Forget every cached file and network (script reload, tests)."""
    global _state
    _state = RuntimeState()


def model_family(sd_model, fallback: str) -> str:
    if sd_model is None:
        return fallback
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    return "sd1"


def _shorthash(entry, cached) -> str:
    """The file's hash as "Lora hashes" shows it: sshs_model_hash, else the addnet hash (host-cached)."""
    known = _state.shorthashes.get(cached.identity)
    if known is not None:
        return known
    full = cached.lora.metadata.get("sshs_model_hash") or ""
    if not full:
        try:
            from modules import hashes
            full = hashes.sha256(entry.filename, "lora/" + entry.name,
                                 use_addnet_hash=getattr(entry, "is_safetensors", True)) or ""
        except Exception:
            from ..safetensors_io import tensor_data_sha256
            full = tensor_data_sha256(entry.filename)
    if full and getattr(entry, "hash", None) != full and hasattr(entry, "set_hash"):
        entry.set_hash(full)
    _state.shorthashes[cached.identity] = full[:12]
    return full[:12]


def forget_conds(p) -> None:
    """Empty the host's cond caches (shared lists on the processing classes).  They are keyed on the
    prompt text, so when the same tags now mean other weights (a file rewritten or added since) the
    text-encoder conds would otherwise be stale."""
    for attr in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        cache = getattr(p, attr, None)
        if isinstance(cache, list) and len(cache) == 2:
            cache[0] = cache[1] = None


def _templates(host, sd_model, entry, cached, layout) -> list:
    """The host modules of a file version on the current model, built once."""
    mapping = getattr(sd_model, "network_layer_mapping", None)
    known = _state.templates.get(cached.identity)
    if known is None or known[0] is not mapping or mapping is None:
        templates = build_templates(host, sd_model, entry, cached.lora, layout)
        _state.templates[cached.identity] = (getattr(sd_model, "network_layer_mapping", None), templates)
        return templates
    return known[1]


def _network_for(p, host, sd_model, request, presets_box: list):
    entry = find_on_disk(host.networks, request.name)
    cached = _state.files.get(entry.filename)
    layout = layout_of(cached.lora)
    per_rank = parse_sigma(request.sigma, layout)
    weights = None
    if request.lbw is not None:
        family = model_family(sd_model, cached.lora.family)
        if "," not in request.lbw and not presets_box:
            from ..presets import load_presets
            presets_box.append(load_presets())
        weights = parse_lbw(request.lbw, family, presets_box[0] if presets_box else None)
    key_digest = digest(cached.identity, per_rank, weights)
    key = (key_digest, request.name, request.te, request.unet)
    net = _state.networks.get(key)
    if net is None:
        net = build_network(host, sd_model, entry, request.name, cached.lora, layout, per_rank, weights,
                            request.te, request.unet, key_digest, mtime=cached.identity[1] / 1e9,
                            templates=_templates(host, sd_model, entry, cached, layout))
        _state.networks[key] = net
    infotext.record(p, request.name, _shorthash(entry, cached))
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
    sd_model = shared.sd_model
    nets, keys, paths, presets_box = [], [], [], []
    for params in params_list:
        items = list(params.items)
        text = tag_text(items)
        try:
            key, path, net = _network_for(p, host, sd_model, read_tag(items), presets_box)
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
    if _state.outcome_changed(tuple(tuple(map(str, params.items)) for params in params_list),
                              tuple(net.name for net in nets)):
        forget_conds(p)
    _state.files.trim(getattr(shared.opts, "lora_in_memory_limit", 0), keep=paths)
    current = _state.files.identities()
    for identity in [i for i in _state.templates if i not in current]:
        del _state.templates[identity]
    _state.keep_networks(keys)
    infotext.write(p)
