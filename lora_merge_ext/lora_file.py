"""In-memory LoRA: modules with float32 factors, metadata and the model family."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class FactorShapes:
    """Shape properties of a LoRA module from its factors' shapes: down (r, in) or (r, in, kh, kw),
    up (out, r) or (out, r, 1, 1), and alpha (None: scale 1)."""

    down: object  # anything with .shape: a tensor, or where a factor lies in a file (lazy_lora)
    up: object
    alpha: float | None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank when alpha is present, else 1 (as the WebUI applies it)."""
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    @property
    def is_conv(self) -> bool:
        return len(self.down.shape) == 4

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.down.shape[2]), int(self.down.shape[3])) if self.is_conv else (1, 1)

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the layer weight this module changes."""
        if self.is_conv:
            return (self.out_features, self.in_features, *self.kernel)
        return (self.out_features, self.in_features)

    @property
    def flat_in(self) -> int:
        """Columns of down as a matrix: in·kh·kw."""
        return math.prod(self.down.shape[1:])


def _own_bytes(t: torch.Tensor) -> torch.Tensor:
    """t itself when it spans its whole storage, else a copy of just its values."""
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()


@dataclass
class LoraModule(FactorShapes):
    """One LoRA module in kohya naming; ΔW = scale·up·down.

    down is (r, in) or (r, in, kh, kw); up is (out, r) or (out, r, 1, 1), kept in the dtype they were
    stored in (fp32, fp16 or bf16) to save memory; up2d(), down2d() and delta() compute in float32.
    A Tucker ``lora_mid`` is folded into ``down`` when the file is read, which is exact.
    """

    name: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    def __getstate__(self) -> dict:
        """A copy (pickle, deepcopy) takes the factors' own bytes: they are often views on a buffer the
        size of the whole file, which pickle would otherwise copy once per view."""
        return {**self.__dict__, "down": _own_bytes(self.down), "up": _own_bytes(self.up)}

    def up2d(self, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """up as an (out, r) matrix in dtype (None: as stored, a view)."""
        up = self.up.reshape(self.up.shape[0], -1)
        return up if dtype is None else up.to(dtype)

    def down2d(self, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """down as an (r, in·kh·kw) matrix in dtype (None: as stored, a view; 3×3 convolutions flattened)."""
        down = self.down.reshape(self.down.shape[0], -1)
        return down if dtype is None else down.to(dtype)

    def delta(self) -> torch.Tensor:
        """Dense ΔW = scale·up·down in the layer's weight shape (for tests and small layers)."""
        return (self.scale * (self.up2d() @ self.down2d())).reshape(self.weight_shape)


@dataclass
class LoraFile:
    """A LoRA read from disk (or built by a merge): modules by kohya name, metadata, family.

    family is one of "sd1", "sd2", "sdxl".
    """

    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    family: str = "sd1"
    path: str | None = None
    sources: list[str] = field(default_factory=list)  # files this one was made from (never overwritten)
    digest: object = None  # the addnet hash of the bytes read (a DataDigest), when read from safetensors
    data_hash: object = None  # a concat's output hash, worked out while merging (an ArenaHash)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # bundle_emb.* tensors, as stored

    def __getstate__(self) -> dict:
        """A copy (pickle, deepcopy) leaves out data_hash, which vouches for these very tensors only
        (a save of the copy hashes its bytes), and takes the embeddings' own bytes (see LoraModule)."""
        return {**self.__dict__, "data_hash": None,
                "embeddings": {key: _own_bytes(t) for key, t in self.embeddings.items()}}

    def file_hash(self) -> str | None:
        """The sha256 the WebUI shows for the file this was read from (None when not from a file)."""
        if self.digest is not None:
            return self.digest.hexdigest()
        if self.path is None:
            return None
        from .safetensors_io import a1111_hash
        return a1111_hash(self.path)

    @property
    def max_rank(self) -> int:
        return max((m.rank for m in self.modules.values()), default=0)
