"""The example LoRAs shipped in examples/: real SD1.5 kohya shapes, small, reproducible from their script."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_merge_ext.loading import load_lora
from lora_merge_ext.ui.standalone import EXAMPLES_DIR

SPEC = Path(__file__).parent / "data" / "module_specs" / "sd15_lora.json"
NAMES = ["example_glow", "example_ink", "example_pastel"]


def load_script():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES_DIR / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_small_real_shaped_sd15_kohya_files(name):
    path = EXAMPLES_DIR / f"{name}.safetensors"
    assert path.stat().st_size < 512 * 1024
    shapes = {row[0]: (row[2], row[3]) for row in json.loads(SPEC.read_text())}
    tensors, metadata = read(path)
    assert metadata["ss_base_model_version"] == "sd_v1" and "ss_network_dim" in metadata
    for key, t in tensors.items():
        module, suffix = key.split(".", 1)
        assert module in shapes and module.startswith("lora_unet_") and "_attn" in module
        out_f, in_f = shapes[module]
        expected = {"lora_down.weight": (2, in_f), "lora_up.weight": (out_f, 2), "alpha": ()}[suffix]
        assert tuple(t.shape) == expected and t.dtype == torch.float16
    lora = load_lora(path)
    assert lora.family == "sd1" and lora.max_rank == 2 and len(lora.modules) == 64
    assert {m.alpha for m in lora.modules.values()} == {1.0}


def test_examples_are_what_the_script_writes(tmp_path):
    load_script().write_examples(tmp_path)
    for name in NAMES:
        fresh, fresh_meta = read(tmp_path / f"{name}.safetensors")
        shipped, shipped_meta = read(EXAMPLES_DIR / f"{name}.safetensors")
        assert fresh_meta == shipped_meta and fresh.keys() == shipped.keys()
        for key in fresh:
            assert torch.equal(fresh[key], shipped[key]), key


def test_ink_and_pastel_share_modules_and_glow_covers_others():
    ink, pastel, glow = (set(load_lora(EXAMPLES_DIR / f"{n}.safetensors").modules)
                         for n in ("example_ink", "example_pastel", "example_glow"))
    assert ink == pastel and not (ink & glow)
