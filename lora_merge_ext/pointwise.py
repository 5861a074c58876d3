"""A 1×1 convolution (SD1's proj_in / proj_out) stored as 4-D factors in one file and as 2-D ones in
another: the same ΔW, and the WebUI loads either form onto the layer.  Before a merge, such 2-D
modules take the 4-D form, so that the inputs agree module by module."""
from __future__ import annotations

import dataclasses


def _pointwise_4d(shape) -> tuple | None:
    """(out, in) of a 1×1 convolution weight shape, None for any other shape."""
    return tuple(shape[:2]) if len(shape) == 4 and tuple(shape[2:]) == (1, 1) else None


def flat_modules_to_widen(loras) -> set[str]:
    """The modules that some input stores 2-D and another as a 1×1 convolution of the same size."""
    four_d: dict[str, tuple] = {}
    for lora in loras:
        for name, module in lora.modules.items():
            size = _pointwise_4d(module.weight_shape)
            if size is not None:
                four_d.setdefault(name, size)
    return {name for lora in loras for name, module in lora.modules.items()
            if len(module.weight_shape) == 2 and four_d.get(name) == tuple(module.weight_shape)}


def widen_flat_modules(loras: list) -> list:
    """The inputs, with those 2-D modules given 4-D factors (views; other inputs are returned as they are)."""
    names = flat_modules_to_widen(loras)
    if not names:
        return loras
    out = []
    for lora in loras:
        hit = [n for n in names if n in lora.modules and len(lora.modules[n].weight_shape) == 2]
        if not hit:
            out.append(lora)
            continue
        modules = dict(lora.modules)
        for n in hit:
            m = modules[n]
            modules[n] = dataclasses.replace(m, down=m.down[:, :, None, None], up=m.up[:, :, None, None])
        out.append(dataclasses.replace(lora, modules=modules))
    return out
