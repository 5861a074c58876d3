"""What the runtime keeps between generation passes: LoRA files (bounded), the host modules built
from each file version, the networks of the last two passes, file hashes, and which networks each
tag text gave last time."""
from __future__ import annotations

import weakref
from collections import OrderedDict

from .file_cache import LoraFileCache
from .network_build import build_templates

MAX_REMEMBERED_PROMPTS = 256


class RuntimeState:
    def __init__(self):
        self.files = LoraFileCache()
        self.networks: "OrderedDict[tuple, object]" = OrderedDict()
        self.previous_keys: set = set()
        self.previous_paths: tuple = (None, set())  # (weak reference to its generation, files) of the last pass
        self.shorthashes: dict = {}   # file identity → shorthash
        self.templates: dict = {}     # file identity → (the model's layer mapping, host modules)
        self.outcomes: "OrderedDict[tuple, tuple]" = OrderedDict()  # tag items → network names applied

    def templates_for(self, host, sd_model, entry, cached, layout) -> list:
        """The host modules of a file version on the current model, built once."""
        mapping = getattr(sd_model, "network_layer_mapping", None)
        known = self.templates.get(cached.identity)
        if known is not None and mapping is not None and known[0] is mapping:
            return known[1]
        templates = build_templates(host, sd_model, entry, cached.lora, layout)
        self.templates[cached.identity] = (getattr(sd_model, "network_layer_mapping", None), templates)
        return templates

    def forget_model(self) -> None:
        """A checkpoint was loaded: host modules and networks point at the old model's layers (and
        would keep them in memory), so they are built again; the files stay cached."""
        self.templates.clear()
        self.networks.clear()
        self.previous_keys = set()

    def outcome_changed(self, tags: tuple, names: tuple) -> bool:
        """Whether the same tag text gave other networks last time (file rewritten, added, fixed), or
        is not remembered (new, forgotten after MAX_REMEMBERED_PROMPTS others, or a UI reload): the
        host's cond caches may hold it from before, and outlive this state."""
        changed = self.outcomes.get(tags) != names
        self.outcomes[tags] = names
        self.outcomes.move_to_end(tags)
        while len(self.outcomes) > MAX_REMEMBERED_PROMPTS:
            self.outcomes.popitem(last=False)
        return changed

    def end_pass(self, file_limit: int, used_paths: list, used_keys: list, generation: object = None) -> None:
        """Trim after a pass: files to the bound (keeping those just used, and within one generation
        those of the pass before, so a hires pass on other files does not read every file again each
        batch), host modules of files no longer cached, networks to those of this pass and the one
        before (first / hires pass)."""
        files = set(used_paths)
        previous, paths = self.previous_paths
        if generation is not None and previous is not None and previous() is generation:
            files |= paths
        self.files.trim(file_limit, keep=files)
        self.previous_paths = (_weak(generation), set(used_paths))
        current = self.files.identities()
        for identity in [i for i in self.templates if i not in current]:
            del self.templates[identity]
        keep = set(used_keys) | self.previous_keys
        for key in [k for k in self.networks if k not in keep]:
            del self.networks[key]
        self.previous_keys = set(used_keys)


def _weak(obj):
    """A weak reference to obj (None for None, or for an object that takes none): an id could be
    reused by the next generation's processing object."""
    try:
        return weakref.ref(obj) if obj is not None else None
    except TypeError:
        return None


_state = RuntimeState()


def current() -> RuntimeState:
    return _state


def reset() -> None:
    """Forget every cached file and network (script unload, tests)."""
    global _state
    _state = RuntimeState()
