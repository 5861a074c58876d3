"""Bundled embeddings: `bundle_emb.NAME.…` tensors, textual-inversion vectors that a LoRA file carries
for its trigger words (kohya's pivotal tuning).  The WebUI registers them whenever the LoRA is used
(reference §2.4), whatever its weight.  A merge or a bake keeps them as stored."""
from __future__ import annotations

import torch

from .errors import LoraMergeError

PREFIX = "bundle_emb."


def is_bundled(key: str) -> bool:
    return key.startswith(PREFIX)


def split_bundled(key: str) -> tuple[str, str]:
    """(NAME, the rest) of a bundle_emb.NAME.… key; the rest is '' when there is none."""
    name, _, rest = key[len(PREFIX):].partition(".")
    return name, rest


def embedding_names(keys) -> list[str]:
    """The embeddings' names (the NAME of bundle_emb.NAME.…), in order of first appearance."""
    return list(dict.fromkeys(split_bundled(key)[0] for key in keys if is_bundled(key)))


def joined_embeddings(loras: list, names: list[str]) -> dict[str, torch.Tensor]:
    """Every input's bundled embeddings together; an embedding two inputs hold with different values
    is refused (the WebUI could register only one of them)."""
    out: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    for lora, name in zip(loras, names):
        for key, tensor in getattr(lora, "embeddings", {}).items():
            held = out.get(key)
            if held is not None and not (held.shape == tensor.shape and torch.equal(held.float(), tensor.float())):
                emb = split_bundled(key)[0]
                raise LoraMergeError(f"bundled embedding '{emb}' differs between {owner[key]} and {name}; "
                                     f"rename or remove it in one of the files (its keys: bundle_emb.{emb}.…)")
            out.setdefault(key, tensor)
            owner.setdefault(key, name)
    return out
