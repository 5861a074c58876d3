"""Bundled embeddings under ``<ljl>`` tags: a file's ``bundle_emb.NAME.…`` vectors become the host's
textual-inversion embeddings and are registered for the pass, as the built-in Lora registers those of
a ``<lora>`` file (v1.10.1 networks.py:181-199, 258-265, 343-356).  The host itself unregisters them
when the next pass starts: ``load_networks`` does so for every network still in ``loaded_networks``
(networks.py:282-290), which includes the ones this extension appended.
"""
from __future__ import annotations

import logging

from ..bundled import split_bundled

log = logging.getLogger(__name__)


def _grouped(tensors: dict) -> dict[str, dict]:
    """NAME → the dict the host builds an embedding from (``string_to_param`` or the named vectors)."""
    grouped: dict[str, dict] = {}
    for key, tensor in tensors.items():
        emb_name, vec_name = split_bundled(key)
        data = grouped.setdefault(emb_name, {})
        head, _, term = vec_name.partition(".")
        if head == "string_to_param":
            data["string_to_param"] = {term: tensor}
        else:
            data[vec_name or emb_name] = tensor
    return grouped


def host_embeddings(networks, tensors: dict, filename: str, mentioned_name: str) -> tuple[dict, list[str]]:
    """The host embeddings of a file's bundled tensors, and a note for each one the host cannot read."""
    if not tensors:
        return {}, []
    from modules.textual_inversion import textual_inversion
    hash_type = getattr(networks, "BundledTIHash", str)  # v1.10: the LoRA's name, per a setting
    made, problems = {}, []
    for emb_name, data in _grouped(tensors).items():
        try:
            embedding = textual_inversion.create_embedding_from_data(data, emb_name,
                                                                     filename=f"{filename}/{emb_name}")
        except Exception as exc:
            problems.append(f"bundled embedding '{emb_name}' not usable: {exc}")
            continue
        embedding.loaded = None
        embedding.shorthash = hash_type(mentioned_name)
        made[emb_name] = embedding
    return made, problems


def register(nets, sd_model) -> None:
    """Register the networks' bundled embeddings by the host's rule: an embedding of the embeddings
    folder with the same name wins; one whose width does not fit the model is set aside."""
    from modules import sd_hijack
    emb_db = sd_hijack.model_hijack.embedding_db
    for net in nets:
        for emb_name, embedding in getattr(net, "bundle_embeddings", {}).items():
            present = emb_db.word_embeddings.get(emb_name)
            if embedding.loaded is None and present is not None:
                _keep_present(present, embedding, emb_name, net.mentioned_name)
                continue
            embedding.loaded = False
            if emb_db.expected_shape == -1 or emb_db.expected_shape == embedding.shape:
                embedding.loaded = True
                emb_db.register_embedding(embedding, sd_model)
            else:
                emb_db.skipped_embeddings[net.mentioned_name] = embedding


def _keep_present(present, embedding, emb_name: str, mentioned_name: str) -> None:
    """The name is taken: by the embeddings folder (which wins, as on the host), or earlier in this
    pass by another tag's network (only networks mark an embedding ``loaded``).  The same file under
    two tags, or under ``<lora>`` and ``<ljl>``, bundles the same vectors: nothing to say then."""
    if not hasattr(present, "loaded"):
        log.warning("bundled embedding %s of %s left out: the embeddings folder has one of that name",
                    emb_name, mentioned_name)
    elif not _same_vectors(present.vec, embedding.vec):
        log.warning("bundled embedding %s of %s left out: another LoRA of the prompt bundles a different "
                    "one of that name", emb_name, mentioned_name)


def _same_vectors(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_vectors(a[k], b[k]) for k in a))
    return a.shape == b.shape and bool((a == b).all())
