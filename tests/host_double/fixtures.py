"""pytest fixtures and LoRA-file helpers for tests that drive the double WebUI.

Import explicitly in a test module: ``from host_double.fixtures import host_factory, write_join``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lora_factory import make_lora

from .harness import start_host

# Small subsets of the real module lists (real shapes), covering every layer kind the Lora
# extension patches: Linear, Conv2d 1x1 / 3x3 (stride 2 for a downsampler), and SDXL's
# MultiheadAttention (te2 q/k/v/out of one layer).
SD15_LAYERS = re.compile(
    r"lora_te_text_model_encoder_layers_0_(self_attn_(q|k|v|out)_proj|mlp_fc1)$"
    r"|lora_unet_down_blocks_0_attentions_0_(proj_in|transformer_blocks_0_attn1_to_(q|out_0)"
    r"|transformer_blocks_0_attn2_to_k|transformer_blocks_0_ff_net_2)$"
    r"|lora_unet_down_blocks_0_resnets_0_(conv1|time_emb_proj)$"
    r"|lora_unet_down_blocks_0_downsamplers_0_conv$"
    r"|lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v$"
    r"|lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q$")
SDXL_LAYERS = re.compile(
    r"lora_te1_text_model_encoder_layers_0_self_attn_(q|v)_proj$"
    r"|lora_te2_text_model_encoder_layers_0_(self_attn_(q|k|v|out)_proj|mlp_fc2)$"
    r"|lora_unet_input_blocks_4_1_(proj_in|transformer_blocks_0_attn1_to_q|transformer_blocks_0_attn2_to_k)$"
    r"|lora_unet_input_blocks_1_0_in_layers_2$|lora_unet_input_blocks_3_0_op$"
    r"|lora_unet_middle_block_1_transformer_blocks_0_ff_net_2$"
    r"|lora_unet_output_blocks_2_1_transformer_blocks_1_attn1_to_out_0$")
SPECS = {"sd1": ("sd15_locon", SD15_LAYERS), "sdxl": ("sdxl_locon", SDXL_LAYERS)}


def keep_of(family: str):
    pattern = SPECS[family][1]
    return lambda name: bool(pattern.match(name))


def write_lora(lora_dir: Path, name: str, family: str = "sd1", rank=4, seed=0, keep=None, **kw) -> Path:
    """A kohya LoRA file `name`.safetensors on the family's test subset (real shapes)."""
    spec, _ = SPECS[family]
    return make_lora(Path(lora_dir) / f"{name}.safetensors", spec, rank=rank, seed=seed,
                     keep=keep or keep_of(family), **kw)


def write_join(lora_dir: Path, name: str, parts: list[Path], **merge_kw) -> Path:
    """The concat join of `parts`, saved as `name`.safetensors next to them."""
    from lora_merge_ext import api
    result = api.merge([str(p) for p in parts], mode="concat", **merge_kw)
    return Path(api.save(result.lora, Path(lora_dir) / f"{name}.safetensors").path)


@pytest.fixture
def host_factory(tmp_path):
    """start(family="sd1", **kw) -> Host, with its Lora folder at tmp_path/"Lora"; all closed at teardown."""
    hosts = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, and fair to a shared machine

    def start(family="sd1", lora_dir=None, **kw):
        if "rows" not in kw and "spec" not in kw:
            kw.setdefault("spec", SPECS[family][0])
            kw.setdefault("keep", keep_of(family))
        host = start_host(lora_dir or tmp_path / "Lora", family=family, **kw)
        hosts.append(host)
        return host

    yield start
    for host in reversed(hosts):
        host.close()
    torch.set_num_threads(threads)


# --- LoRA sets shared by a test module -------------------------------------------------------

def _lora_set(root: Path, family: str) -> dict[str, Path]:
    """A (rank 4), B (rank 2), C (rank 3) plain LoRAs; J = join(A, B), K = join(B, C)."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "A": write_lora(root, "A", family, rank=4, seed=1),
        "B": write_lora(root, "B", family, rank=2, seed=2, alpha=None),
        "C": write_lora(root, "C", family, rank=3, seed=3, alpha=1.0),
    }
    files["J"] = write_join(root, "J", [files["A"], files["B"]])
    files["K"] = write_join(root, "K", [files["B"], files["C"]])
    return files


@pytest.fixture(scope="module")
def sd1_loras(tmp_path_factory):
    return _lora_set(tmp_path_factory.mktemp("sd1") / "Lora", "sd1")


@pytest.fixture(scope="module")
def sdxl_loras(tmp_path_factory):
    return _lora_set(tmp_path_factory.mktemp("sdxl") / "Lora", "sdxl")


# --- comparing generations ---------------------------------------------------------------------

def outputs(processed, index: int = 0) -> dict:
    """Every layer output of one image of a Processed: {(stage, layer): tensor}."""
    return processed.images[index].layers()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_close(a: dict, b: dict, tol: float = 2e-4) -> None:
    """Same image up to float32 round-off of a different but equivalent factorisation."""
    assert a.keys() == b.keys()
    bad = {k: float((a[k] - b[k]).abs().max()) for k in a
           if not torch.allclose(a[k], b[k], rtol=tol, atol=tol)}
    assert not bad, f"{len(bad)} layer outputs differ, worst: {max(bad.items(), key=lambda kv: kv[1])}"


def assert_identical(a: dict, b: dict) -> None:
    """Bit-for-bit the same image."""
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} layer outputs differ, e.g. {bad[:3]}"


def assert_differs(a: dict, b: dict, at_least: float = 1e-2) -> None:
    assert max_diff(a, b) > at_least
