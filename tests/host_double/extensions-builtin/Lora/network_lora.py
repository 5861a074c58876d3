"""Built-in Lora double, ``network_lora``: plain LoRA and LoCon modules (reference §2.3).

``ModuleTypeLora`` claims a layer's weight dict when it has ``lora_up.weight`` and
``lora_down.weight`` (PEFT's ``lora_B``/``lora_A`` are renamed to those in place first).
``NetworkModuleLora`` keeps each factor as a frozen, bias-free torch layer (``up_model``,
``down_model``, optional ``mid_model``) of the kind the target layer needs, on the CPU in
``devices.dtype``; its rank ``dim`` is the row count of the down factor.  ``calc_updown`` reads
the factor layers' current weights every time it is called.
"""
import torch

import lyco_helpers
import network
from modules import devices

_LINEAR_TARGETS = (torch.nn.Linear, torch.nn.modules.linear.NonDynamicallyQuantizableLinear,
                   torch.nn.MultiheadAttention)
_UP, _DOWN, _MID = "lora_up.weight", "lora_down.weight", "lora_mid.weight"


class ModuleTypeLora(network.ModuleType):
    def create_module(self, net: network.Network, weights: network.NetworkWeights):
        w = weights.w
        if "lora_A.weight" in w and "lora_B.weight" in w and not (_UP in w and _DOWN in w):
            w[_DOWN] = w.pop("lora_A.weight")
            w[_UP] = w.pop("lora_B.weight")
        if _UP in w and _DOWN in w:
            return NetworkModuleLora(net, weights)
        return None


class NetworkModuleLora(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.up_model = self._factor_layer(weights.w[_UP], "up")
        self.down_model = self._factor_layer(weights.w[_DOWN], "down")
        mid = weights.w.get(_MID)
        self.mid_model = None if mid is None else self._factor_layer(mid, "mid")
        self.dim = weights.w[_DOWN].shape[0]

    def _factor_layer(self, tensor: torch.Tensor, role: str) -> torch.nn.Module:
        """A frozen layer holding one factor; the target's exact type decides Linear or Conv2d."""
        target = self.sd_module
        kind = type(target)
        if kind in _LINEAR_TARGETS:
            matrix = tensor.reshape(tensor.shape[0], -1)
            layer = torch.nn.Linear(matrix.shape[1], matrix.shape[0], bias=False)
        elif kind is torch.nn.Conv2d:
            if tensor.dim() == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
            out_ch, in_ch = tensor.shape[:2]
            spatial = role == "mid" or (role == "down" and tuple(tensor.shape[2:]) != (1, 1))
            if spatial:
                layer = torch.nn.Conv2d(in_ch, out_ch, target.kernel_size, target.stride, target.padding, bias=False)
            else:
                layer = torch.nn.Conv2d(in_ch, out_ch, (1, 1), bias=False)
        else:
            raise AssertionError(f"Lora layer {self.network_key} matched a layer of unsupported type "
                                 f"{kind.__name__}")
        with torch.no_grad():
            layer.weight.copy_(tensor.reshape(layer.weight.shape))
        layer.to(device=devices.cpu, dtype=devices.dtype)
        layer.weight.requires_grad_(False)
        return layer

    def calc_updown(self, orig_weight):
        where = orig_weight.device
        up = self.up_model.weight.to(where)
        down = self.down_model.weight.to(where)
        shape = [up.shape[0], down.shape[1]]
        if self.mid_model is not None:
            mid = self.mid_model.weight.to(where)
            shape += list(mid.shape[2:])
            product = lyco_helpers.rebuild_cp_decomposition(up, down, mid)
        else:
            shape += list(down.shape[2:])
            product = lyco_helpers.rebuild_conventional(up, down, shape, self.network.dyn_dim)
        return self.finalize_updown(product, orig_weight, shape)

    def forward(self, x, y):
        """Functional mode: y + up(down(x)) · multiplier · scale (``dyn_dim`` and ``mid`` not used)."""
        self.down_model.to(devices.device)
        self.up_model.to(devices.device)
        return y + self.up_model(self.down_model(x)) * (self.multiplier() * self.calc_scale())
