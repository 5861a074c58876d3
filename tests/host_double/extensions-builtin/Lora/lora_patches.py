"""Built-in Lora double, ``lora_patches``: swapping the torch layer classes' ``forward`` and
``_load_from_state_dict`` for the Lora versions (reference §2.5).

Creating ``LoraPatches()`` patches the classes themselves (every instance is affected) through
``modules.patches`` and keeps the originals as attributes ``<Class>_forward`` and
``<Class>_load_state_dict``; ``undo()`` puts the originals back.
"""
import torch

import networks
from modules import patches

PATCHED_CLASSES = {
    "Linear": torch.nn.Linear,
    "Conv2d": torch.nn.Conv2d,
    "GroupNorm": torch.nn.GroupNorm,
    "LayerNorm": torch.nn.LayerNorm,
    "MultiheadAttention": torch.nn.MultiheadAttention,
}


class LoraPatches:
    def __init__(self):
        for kind, cls in PATCHED_CLASSES.items():
            forward, load = networks.layer_replacements(kind)
            setattr(self, f"{kind}_forward", patches.patch(__name__, cls, "forward", forward))
            setattr(self, f"{kind}_load_state_dict", patches.patch(__name__, cls, "_load_from_state_dict", load))

    def undo(self):
        for kind, cls in PATCHED_CLASSES.items():
            patches.undo(__name__, cls, "forward")
            patches.undo(__name__, cls, "_load_from_state_dict")
            setattr(self, f"{kind}_forward", None)
            setattr(self, f"{kind}_load_state_dict", None)
