"""SD1's proj_in / proj_out are 1×1 convolutions: one file may store their factors 4-D, another 2-D.
Both are the same ΔW (the WebUI loads either), so they merge module by module, in every mode."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from delta_oracle import dense_deltas
from lora_factory import make_lora
from lora_merge_ext import api

KEEP = lambda n: "down_blocks_1_attentions_0_proj" in n or "attn1_to_q" in n and "down_blocks_1" in n  # noqa: E731


@pytest.fixture
def pair(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=KEEP)
    flat = {k: (t.flatten(1) if "proj_" in k and t.dim() == 4 else t) for k, t in load_file(str(a)).items()}
    assert any(t.dim() == 2 and "proj_in.lora_down" in k for k, t in flat.items())
    b = tmp_path / "b.safetensors"
    save_file(flat, str(b))
    return a, b


@pytest.mark.parametrize("mode", ["concat", "add", "svd"])
@pytest.mark.parametrize("order", [0, 1])
def test_a_flat_and_a_4d_pointwise_module_merge_as_one_layer(pair, tmp_path, mode, order):
    a, b = pair if order == 0 else pair[::-1]
    out = tmp_path / f"{mode}{order}.safetensors"
    api.merge_to_file([a, b], out, mode=mode, weights=[1, 0.5], dtype="fp32")
    twin = tmp_path / "twin.safetensors"  # the same file twice, both 4-D: what the merge must give
    twin.write_bytes(pair[0].read_bytes())
    same = tmp_path / f"same_{mode}.safetensors"
    api.merge_to_file([pair[0], twin], same, mode=mode, weights=[1, 0.5], dtype="fp32")
    got, want = dense_deltas(out), dense_deltas(same)
    assert set(got) == set(want) == set(dense_deltas(pair[0]))
    for name, delta in got.items():
        assert delta.shape == want[name].shape  # the 4-D form, whichever input came first
        torch.testing.assert_close(delta, want[name], rtol=1e-4, atol=1e-6)
    if mode != "add":  # exact modes (svd keeps rank 4, the rank of the target): 1.5 ΔW
        for name, delta in dense_deltas(pair[0]).items():
            torch.testing.assert_close(got[name], 1.5 * delta, rtol=1e-4, atol=1e-6)
    stored = load_file(str(out))
    assert stored["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"].dim() == 4
