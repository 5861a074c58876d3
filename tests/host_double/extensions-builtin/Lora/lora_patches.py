"""Built-in Lora double: patches forward/_load_from_state_dict of the torch layer classes (reference §2.5)."""
import torch

import networks
from modules import patches


class LoraPatches:
    def __init__(self):
        self.Linear_forward = patches.patch(__name__, torch.nn.Linear, "forward", networks.network_Linear_forward)
        self.Linear_load_state_dict = patches.patch(__name__, torch.nn.Linear, "_load_from_state_dict",
                                                    networks.network_Linear_load_state_dict)
        self.Conv2d_forward = patches.patch(__name__, torch.nn.Conv2d, "forward", networks.network_Conv2d_forward)
        self.Conv2d_load_state_dict = patches.patch(__name__, torch.nn.Conv2d, "_load_from_state_dict",
                                                    networks.network_Conv2d_load_state_dict)
        self.GroupNorm_forward = patches.patch(__name__, torch.nn.GroupNorm, "forward", networks.network_GroupNorm_forward)
        self.GroupNorm_load_state_dict = patches.patch(__name__, torch.nn.GroupNorm, "_load_from_state_dict",
                                                       networks.network_GroupNorm_load_state_dict)
        self.LayerNorm_forward = patches.patch(__name__, torch.nn.LayerNorm, "forward", networks.network_LayerNorm_forward)
        self.LayerNorm_load_state_dict = patches.patch(__name__, torch.nn.LayerNorm, "_load_from_state_dict",
                                                       networks.network_LayerNorm_load_state_dict)
        self.MultiheadAttention_forward = patches.patch(__name__, torch.nn.MultiheadAttention, "forward",
                                                        networks.network_MultiheadAttention_forward)
        self.MultiheadAttention_load_state_dict = patches.patch(__name__, torch.nn.MultiheadAttention,
                                                                "_load_from_state_dict",
                                                                networks.network_MultiheadAttention_load_state_dict)

    def undo(self):
        for cls, prefix in ((torch.nn.Linear, "Linear"), (torch.nn.Conv2d, "Conv2d"), (torch.nn.GroupNorm, "GroupNorm"),
                            (torch.nn.LayerNorm, "LayerNorm"), (torch.nn.MultiheadAttention, "MultiheadAttention")):
            setattr(self, f"{prefix}_forward", patches.undo(__name__, cls, "forward"))
            setattr(self, f"{prefix}_load_state_dict", patches.undo(__name__, cls, "_load_from_state_dict"))
