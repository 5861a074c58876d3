"""Pick the torch device for a merge, with a clear message when CUDA is asked for but absent."""
from __future__ import annotations

import torch

from .errors import LoraMergeError


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(name: str | None) -> torch.device:
    name = (name or "cpu").lower()
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not cuda_available():
            raise LoraMergeError(f"device {name}: no CUDA GPU is available to this torch "
                                 f"({torch.__version__}); use --device cpu")
        return torch.device(name)
    raise LoraMergeError(f"device {name!r} is not cpu or cuda")
