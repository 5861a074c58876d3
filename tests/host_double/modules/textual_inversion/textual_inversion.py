"""``modules.textual_inversion.textual_inversion``: the embedding object, the embedding database and
``create_embedding_from_data`` (WebUI v1.10.1, modules/textual_inversion/textual_inversion.py:39-52,
112-155, 287-323), as far as the Lora extension's bundled embeddings use them.

Simplified: the database looks names up as whole words of the prompt instead of by token ids, and
``expected_shape`` is set by the fake model (the host asks the text encoder).
"""
from __future__ import annotations

import torch

from modules import devices


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None
        self.vectors = 0
        self.sd_checkpoint = None
        self.sd_checkpoint_name = None
        self.filename = None
        self.hash = None
        self.shorthash = None


class EmbeddingDatabase:
    def __init__(self):
        self.ids_lookup = {}
        self.word_embeddings = {}
        self.skipped_embeddings = {}
        self.expected_shape = -1

    def register_embedding(self, embedding, model):
        return self.register_embedding_by_name(embedding, model, embedding.name)

    def register_embedding_by_name(self, embedding, model, name):
        """Register `embedding` under `name`; with None, unregister the name."""
        if embedding is None:
            self.word_embeddings.pop(name, None)
            self.ids_lookup.pop(name, None)
            return None
        self.ids_lookup[name] = [((name,), embedding)]
        self.word_embeddings[name] = embedding
        return embedding


def create_embedding_from_data(data, name, filename="unknown embedding file", filepath=None):
    """An Embedding from a loaded file's dict: a textual-inversion ``string_to_param``, an SDXL
    ``clip_l`` + ``clip_g`` pair, or a one-tensor diffusers concept."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        assert len(params) == 1, "embedding file has multiple terms in it"
        vec = next(iter(params.values())).detach().to(devices.device, dtype=torch.float32)
        shape, vectors = vec.shape[-1], vec.shape[0]
    elif isinstance(data, dict) and "clip_g" in data and "clip_l" in data:
        vec = {k: v.detach().to(devices.device, dtype=torch.float32) for k, v in data.items()}
        shape = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
        vectors = data["clip_g"].shape[0]
    elif isinstance(data, dict) and isinstance(next(iter(data.values())), torch.Tensor):
        assert len(data) == 1, "embedding file has multiple terms in it"
        emb = next(iter(data.values()))
        if emb.dim() == 1:
            emb = emb.unsqueeze(0)
        vec = emb.detach().to(devices.device, dtype=torch.float32)
        shape, vectors = vec.shape[-1], vec.shape[0]
    else:
        raise Exception(f"Couldn't identify {filename} as neither textual inversion embedding nor diffuser concept.")
    embedding = Embedding(vec, name)
    embedding.step = data.get("step", None)
    embedding.vectors = vectors
    embedding.shape = shape
    return embedding
