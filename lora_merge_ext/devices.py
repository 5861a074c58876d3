"""Pick the torch device for a merge, with a clear message when CUDA is asked for but absent."""
from __future__ import annotations

import torch

from .errors import LoraMergeError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: "str | torch.device | None") -> torch.device:
    """cpu or cuda[:N], given as text or a torch.device."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is not None and not isinstance(name, str):
        raise LoraMergeError(f"device {name!r} is not cpu or cuda")
    name = (name or "cpu").lower()
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not cuda_available():
            raise LoraMergeError(f"device {name}: no CUDA GPU is available to this torch "
                                 f"({torch.__version__}); use device cpu")
        return torch.device(name)
    raise LoraMergeError(f"device {name!r} is not cpu or cuda")
