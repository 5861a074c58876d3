"""A small stand-in for a loaded SD1.5 / SDXL checkpoint whose layers carry the real layer names.

Built from module-spec rows ``[kohya_name, kind, out, in, kh, kw]`` (tests/data/module_specs): for
every row the layer a LoRA module of that name patches is created at its real place in the model
tree, with its real shape.  The tree has the attributes the Lora extension walks:

* SD1: ``cond_stage_model.wrapped.transformer.text_model.encoder.layers.N.self_attn.q_proj`` …
  (layer names ``transformer_text_model_…``) and ``model.diffusion_model.input_blocks.1.1.…``
  (``diffusion_model_…``), ``is_sdxl = False``;
* SDXL: ``conditioner.embedders[0].wrapped.transformer.text_model…`` (``0_transformer_…``),
  ``conditioner.embedders[1].wrapped.model.transformer.resblocks.N.attn`` (a MultiheadAttention,
  ``1_model_transformer_resblocks_N_attn``) and ``…mlp.c_fc`` / ``mlp.c_proj``, ``is_sdxl = True``.

Weights are seeded from the layer name.  ``encode_text(prompt)`` runs every text-encoder layer on an
input seeded from the prompt text
(whitespace-normalised, as tokenized); ``run_unet(seed, tag)`` runs every UNet layer on an input seeded
from the seed; both return ``{layer name: output}``.  The layers' forwards are whatever torch's
classes have at call time, so the Lora extension's patches take effect exactly as in the host.
"""
from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace

import torch

_PROTECTED = ["diffusion_model", "input_blocks", "middle_block", "output_blocks", "transformer_blocks", "proj_in",
              "proj_out", "to_q", "to_k", "to_v", "to_out", "in_layers", "out_layers", "emb_layers", "skip_connection",
              "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]


def dotted(name: str) -> str:
    """`transformer_blocks_0_attn1_to_q` → `transformer_blocks.0.attn1.to_q` (multi-word names kept)."""
    protected = name
    for i, word in enumerate(_PROTECTED):
        protected = re.sub(rf"(?<![a-z]){word}(?![a-z0-9])", f"@{i}@", protected)
    return re.sub(r"@(\d+)@", lambda m: _PROTECTED[int(m.group(1))], protected.replace("_", "."))


_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}


def _sd1_unet_path(rest: str) -> str:
    """diffusers SD1 UNet module (after `lora_unet_`) → compvis path under `diffusion_model`."""
    m = re.fullmatch(r"down_blocks_(\d)_(attentions|resnets)_(\d)_(.+)", rest)
    if m:
        i, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks_{1 + 3 * i + j}_{1 if kind == 'attentions' else 0}_{_RESNET.get(tail, tail)}"
    m = re.fullmatch(r"down_blocks_(\d)_downsamplers_0_conv", rest)
    if m:
        return f"input_blocks_{3 + 3 * int(m[1])}_0_op"
    m = re.fullmatch(r"mid_block_(attentions|resnets)_(\d)_(.+)", rest)
    if m:
        kind, j, tail = m[1], int(m[2]), m[3]
        return f"middle_block_{1 if kind == 'attentions' else 2 * j}_{_RESNET.get(tail, tail)}"
    m = re.fullmatch(r"up_blocks_(\d)_(attentions|resnets)_(\d)_(.+)", rest)
    if m:
        i, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks_{3 * i + j}_{1 if kind == 'attentions' else 0}_{_RESNET.get(tail, tail)}"
    m = re.fullmatch(r"up_blocks_(\d)_upsamplers_0_conv", rest)
    if m:
        i = int(m[1])
        return f"output_blocks_{3 * i + 2}_{1 if i == 0 else 2}_conv"
    raise ValueError(f"no SD1 UNet layer for lora_unet_{rest}")


def layer_path(kohya_name: str, family: str) -> tuple[str, str, str | None]:
    """(part, dotted path of the patched layer inside that part, MHA projection or None).

    part is "te0"/"te1" (text encoders; "te0" for SD1's only one) or "unet"."""
    if kohya_name.startswith("lora_unet_"):
        rest = kohya_name[len("lora_unet_"):]
        path = rest if family == "sdxl" else _sd1_unet_path(rest)
        return "unet", "diffusion_model." + dotted(path), None
    m = re.fullmatch(r"lora_te([12]?)_text_model_encoder_layers_(\d+)_(.+)", kohya_name)
    if not m:
        raise ValueError(f"not a text-encoder module: {kohya_name}")
    which, layer, tail = m[1], int(m[2]), m[3]
    if which == "2":
        proj = re.fullmatch(r"self_attn_(q|k|v|out)_proj", tail)
        if proj:
            return "te1", f"model.transformer.resblocks.{layer}.attn", proj[1]
        tail = {"mlp_fc1": "mlp_c_fc", "mlp_fc2": "mlp_c_proj"}[tail]
        return "te1", f"model.transformer.resblocks.{layer}.{dotted(tail)}", None
    return "te0", f"transformer.text_model.encoder.layers.{layer}.{dotted(tail)}", None


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _put(root: torch.nn.Module, path: str, leaf: torch.nn.Module) -> None:
    *parents, last = path.split(".")
    node = root
    for part in parents:
        child = node._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            node.add_module(part, child)
        node = child
    if last not in node._modules:
        node.add_module(last, leaf)


def _make_leaf(kind: str, out: int, inp: int, kh: int, path: str) -> torch.nn.Module:
    bias = not re.search(r"to_[qkv]$", path)
    if kind == "linear":
        layer = torch.nn.Linear(inp, out, bias=bias)
    else:
        stride = 2 if path.endswith(".op") else 1
        layer = torch.nn.Conv2d(inp, out, kh, stride=stride, padding=kh // 2, bias=bias)
    return layer


class FakeSdModel(torch.nn.Module):
    def __init__(self, family: str, rows: list[list]):
        super().__init__()
        if family not in ("sd1", "sdxl"):
            raise ValueError(f"the double models sd1 and sdxl, not {family}")
        self.family = family
        self.is_sdxl = family == "sdxl"
        self.is_sd2 = False
        self.is_sd1 = family == "sd1"
        self.sd_checkpoint_info = SimpleNamespace(name=f"fake-{family}.safetensors", shorthash="0123456789")
        self.sd_model_hash = "01234567"
        wrappers = [torch.nn.Module(), torch.nn.Module()]
        self.model = torch.nn.Module()
        self.layers: dict[str, list[tuple[str, torch.nn.Module]]] = {"te": [], "unet": []}
        mha_done = set()
        for name, kind, out, inp, kh, kw in rows:
            part, path, proj = layer_path(name, family)
            if part == "unet":
                root = self.model
            else:
                root = wrappers[0 if part == "te0" else 1]
            if proj is not None:
                if path in mha_done:
                    continue
                mha_done.add(path)
                leaf = torch.nn.MultiheadAttention(inp, max(1, inp // 64))
            else:
                leaf = _make_leaf(kind, out, inp, kh, path)
            _put(root, path, leaf)
            group = "unet" if part == "unet" else "te"
            label = ("" if part == "unet" or not self.is_sdxl else f"{part[-1]}_") + path
            self.layers[group].append((label, leaf))
        if self.is_sdxl:
            embedders = torch.nn.ModuleList()
            for w in wrappers:
                e = torch.nn.Module()
                e.wrapped = w
                embedders.append(e)
            self.conditioner = torch.nn.Module()
            self.conditioner.embedders = embedders
        else:
            self.cond_stage_model = torch.nn.Module()
            self.cond_stage_model.wrapped = wrappers[0]
        self._init_weights()
        self.requires_grad_(False)

    def _init_weights(self):
        for group in self.layers.values():
            for label, layer in group:
                gen = torch.Generator().manual_seed(_seed_of("weights", label))
                for pname, param in layer.named_parameters():
                    fan_in = param.shape[1] * (param[0][0].numel() if param.dim() == 4 else 1) if param.dim() > 1 else 1
                    with torch.no_grad():
                        param.copy_(torch.randn(param.shape, generator=gen) / fan_in ** 0.5)

    @staticmethod
    def _input_for(layer: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        if isinstance(layer, torch.nn.MultiheadAttention):
            return torch.randn(3, 1, layer.embed_dim, generator=gen)
        if isinstance(layer, torch.nn.Conv2d):
            return torch.randn(1, layer.in_channels, 4, 4, generator=gen)
        return torch.randn(2, layer.in_features, generator=gen)

    def _run(self, group: str, *seed_parts) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            for label, layer in self.layers[group]:
                x = self._input_for(layer, torch.Generator().manual_seed(_seed_of(*seed_parts, label)))
                if isinstance(layer, torch.nn.MultiheadAttention):
                    out[label] = layer(x, x, x, need_weights=False)[0].clone()
                else:
                    out[label] = layer(x).clone()
        return out

    def encode_text(self, prompt: str) -> dict[str, torch.Tensor]:
        """Text-encoder layer outputs for one (tag-free) prompt; whitespace runs count as one space,
        as they do for the tokenizer.  A word of the prompt that names a registered textual-inversion
        embedding adds that embedding's vectors (key "embedding NAME", per encoder for SDXL)."""
        out = self._run("te", "prompt", " ".join(prompt.split()))
        from modules import sd_hijack
        known = sd_hijack.model_hijack.embedding_db.word_embeddings
        for word in dict.fromkeys(re.findall(r"[^\s,()\[\]:]+", prompt)):
            embedding = known.get(word)
            if embedding is None:
                continue
            vecs = embedding.vec if isinstance(embedding.vec, dict) else {"": embedding.vec}
            for part, vec in vecs.items():
                out[f"embedding {word} {part}".rstrip()] = vec.clone()
        return out

    def run_unet(self, seed: int, stage: str = "first pass") -> dict[str, torch.Tensor]:
        """UNet layer outputs for one image seed."""
        return self._run("unet", stage, int(seed))
