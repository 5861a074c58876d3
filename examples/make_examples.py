"""Write the small example LoRAs shipped with the project (deterministic; run from anywhere).

Three SD1.5 kohya LoRA files, rank 2, fp16, attention modules only, with the module names and
shapes that kohya's sd-scripts writes for SD1.5 (diffusers-style UNet names):

- example_ink.safetensors     cross-attention (attn2) q/k/v/out of every transformer block
- example_pastel.safetensors  the same modules as example_ink, other factors
- example_glow.safetensors    self-attention (attn1) q/k/v/out of every transformer block

The factors are random (fixed seeds): the files exist so that a new user can try every merge
mode in a minute, not to change images in a meaningful way.

    python examples/make_examples.py [OUT_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 2
ALPHA = 1.0
CONTEXT_DIM = 768  # CLIP ViT-L/14 hidden size: the in-features of cross-attention k and v

# (diffusers block prefix, channels) for every SD1.5 UNet transformer block
_BLOCKS = (
    [(f"down_blocks_{b}_attentions_{a}", c) for b, c in ((0, 320), (1, 640), (2, 1280)) for a in (0, 1)]
    + [("mid_block_attentions_0", 1280)]
    + [(f"up_blocks_{b}_attentions_{a}", c) for b, c in ((1, 1280), (2, 640), (3, 320)) for a in (0, 1, 2)]
)

EXAMPLES = {
    # name: (attention kind, seed)
    "example_ink": ("attn2", 101),
    "example_pastel": ("attn2", 202),
    "example_glow": ("attn1", 303),
}


def attention_modules(kind: str) -> list[tuple[str, int, int]]:
    """(kohya module name, out_features, in_features) for one attention kind over all blocks."""
    out = []
    for prefix, ch in _BLOCKS:
        base = f"lora_unet_{prefix}_transformer_blocks_0_{kind}"
        kv_in = CONTEXT_DIM if kind == "attn2" else ch
        out += [(f"{base}_to_q", ch, ch), (f"{base}_to_k", ch, kv_in),
                (f"{base}_to_v", ch, kv_in), (f"{base}_to_out_0", ch, ch)]
    return out


def example_tensors(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """Kohya state dict (fp16) for one example."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, out_f, in_f in attention_modules(kind):
        down = torch.randn(RANK, in_f, generator=gen) / in_f ** 0.5
        up = torch.randn(out_f, RANK, generator=gen) * 0.05
        tensors[f"{name}.lora_down.weight"] = down.half()
        tensors[f"{name}.lora_up.weight"] = up.half()
        tensors[f"{name}.alpha"] = torch.tensor(ALPHA).half()
    return tensors


def example_metadata(name: str) -> dict[str, str]:
    return {
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(ALPHA),
        "ss_output_name": name,
        "ss_training_comment": "example LoRA with random factors, written by examples/make_examples.py",
    }


def write_examples(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (kind, seed) in EXAMPLES.items():
        path = out_dir / f"{name}.safetensors"
        save_file(example_tensors(kind, seed), str(path), metadata=example_metadata(name))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent
    for path in write_examples(out_dir):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
