"""What `inspect` shows: family, modules, ranks, alpha, join components, bundled embeddings, hash, metadata."""
from __future__ import annotations

import os
from collections import Counter

from .bundled import embedding_names
from .family import LABELS
from .layout import METADATA_KEY, layout_or_problem
from .loading import load_lora
from .safetensors_io import tensor_data_sha256

LONG_VALUE = 200


def describe(path: str) -> dict:
    """A JSON-ready description of a LoRA file."""
    lora = load_lora(path)
    ranks = Counter(m.rank for m in lora.modules.values())
    alphas = Counter(m.alpha for m in lora.modules.values())
    layout, layout_problem = layout_or_problem(lora)  # a problem: resized or edited by another tool
    joined = METADATA_KEY in lora.metadata and not layout_problem
    digest = tensor_data_sha256(path) if path.lower().endswith(".safetensors") else None
    stored = lora.metadata.get("sshs_model_hash")
    return {
        "file": os.path.basename(path),
        "size": os.path.getsize(path),
        "family": LABELS[lora.family],
        "modules": len(lora.modules),
        "text_encoder_modules": sum(1 for n in lora.modules if n.startswith("lora_te")),
        "conv_modules": sum(1 for m in lora.modules.values() if m.kernel != (1, 1)),
        "ranks": {str(r): n for r, n in sorted(ranks.items())},
        "alphas": {("none" if a is None else f"{a:g}"): n for a, n in alphas.items()},
        "components": [{"name": c.name, "rank": c.rank} for c in layout.components] if joined else None,
        "layout_problem": layout_problem,
        "bundled_embeddings": embedding_names(lora.embeddings),
        "sha256": digest,
        "shorthash": digest[:12] if digest else None,
        "stored_hash_matches": None if stored is None or digest is None else stored.lower() == digest,  # hex in either case
        "metadata": dict(sorted(lora.metadata.items())),  # whole: --json readers parse ljl_provenance
    }


def format_description(info: dict) -> str:
    lines = [f"{info['file']}: {info['family']} LoRA, {info['modules']} modules "
             f"({info['text_encoder_modules']} text encoder, {info['conv_modules']} 3x3 conv), "
             f"{info['size'] / 2**20:.1f} MiB",
             "ranks: " + ", ".join(f"{r} ×{n}" for r, n in info["ranks"].items()),
             "alpha: " + ", ".join(f"{a} ×{n}" for a, n in info["alphas"].items())]
    if info["components"]:
        lines.append("joined from: " + ", ".join(f"{c['name']} (rank {c['rank']})" for c in info["components"]))
        lines.append("Σ: one number, one per component or one per rank (" +
                     str(sum(c["rank"] for c in info["components"])) + " values)")
    if info["layout_problem"]:
        lines.append(f"join layout ({METADATA_KEY}) unusable, so <ljl> and realize refuse this file "
                     f"(<lora> applies it whole): {info['layout_problem']}")
    if info["bundled_embeddings"]:
        lines.append("bundled embeddings: " + ", ".join(info["bundled_embeddings"]))
    if info["sha256"]:
        check = {True: "matches sshs_model_hash", False: "DIFFERS from sshs_model_hash", None: "no stored hash"}
        lines.append(f"sha256 (tensor data): {info['sha256']} [{check[info['stored_hash_matches']]}]")
    lines.append("metadata:")
    lines += [f"  {k}: {v if len(v) <= LONG_VALUE else v[:LONG_VALUE] + '…'}" for k, v in info["metadata"].items()]
    return "\n".join(lines)
