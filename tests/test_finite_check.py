"""NaN/Inf detection: the extremes of a file's buffer and the per-tensor sums agree with
torch.isfinite on every float dtype, including values whose sum overflows."""
import pytest
import torch
from safetensors.torch import save_file

from lora_merge_ext.finite_check import block_is_finite, find_nonfinite, runs_are_finite
from lora_merge_ext.safetensors_io import read_tensor_file

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPECIALS = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("special", [None, *SPECIALS])
def test_extremes_and_sums_agree_with_isfinite(dtype, special):
    big = torch.finfo(dtype).max
    x = torch.tensor([0.0, -0.0, 1e-30, -big, big, torch.finfo(dtype).tiny / 4, 3.5], dtype=dtype)
    if special is not None:
        x[4] = special
    raw = x.view(torch.uint8)
    assert runs_are_finite(raw, [(dtype, 0, raw.numel())]) == bool(torch.isfinite(x).all())
    assert find_nonfinite({"x": x}) == ([] if special is None else ["x"])


def test_sums_that_overflow_are_not_mistaken_for_infinities():
    tensors = {"huge16": torch.full((1000,), 60000.0, dtype=torch.float16),
               "huge32": torch.full((10,), 3e38), "ok": torch.ones(3, dtype=torch.bfloat16)}
    assert find_nonfinite(tensors) == []
    tensors["huge32"][3] = float("nan")
    assert find_nonfinite(tensors) == ["huge32"]


def test_float8_and_misaligned_runs_are_not_claimed_clean():
    x = torch.zeros(8, dtype=torch.float8_e4m3fn)
    assert runs_are_finite(x.view(torch.uint8), [(torch.float8_e4m3fn, 0, 8)]) is False
    assert runs_are_finite(torch.zeros(9, dtype=torch.uint8), [(torch.float16, 1, 9)]) is False
    assert runs_are_finite(torch.zeros(4, dtype=torch.uint8), [(torch.int32, 0, 4)]) is True


@pytest.mark.parametrize("where", ["a16", "b32", "c64", "dbf"])
def test_file_with_several_dtypes_names_the_bad_tensor(tmp_path, where):
    tensors = {"a16": torch.randn(50, 7).half(), "b32": torch.randn(9), "c64": torch.randn(3, 3).double(),
               "dbf": torch.randn(40).bfloat16(), "e8": torch.arange(5, dtype=torch.int8)}
    save_file(tensors, tmp_path / "clean.safetensors")
    assert read_tensor_file(tmp_path / "clean.safetensors").nonfinite_keys() == []
    tensors[where].view(-1)[-1] = float("inf")
    save_file(tensors, tmp_path / "bad.safetensors")
    assert read_tensor_file(tmp_path / "bad.safetensors").nonfinite_keys() == [where]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("size", [17, 4099])
def test_a_single_special_is_found_anywhere_in_a_long_run(dtype, special, size):
    """The extremes are taken by vectorised loops with a scalar tail: a lone NaN or Inf in the
    first, a middle or the last lane of either is found, in a run and in a stream's block."""
    for position in (0, 1, size // 2, size - 2, size - 1):
        x = torch.full((size,), -2.5, dtype=dtype)
        x[position] = special
        assert not runs_are_finite(x.view(torch.uint8), [(dtype, 0, x.numel() * x.element_size())])
        assert not block_is_finite(x)
    assert block_is_finite(torch.full((size,), torch.finfo(dtype).max, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_two_pass_extremes_used_where_torch_lacks_aminmax_find_the_same(monkeypatch, dtype):
    """torch 2.1 (the WebUI's) has no aminmax of fp16/bf16 on the CPU: min and max take its place."""
    from lora_merge_ext import finite_check
    monkeypatch.setitem(finite_check._AMINMAX, dtype, False)
    clean = torch.linspace(-3, 3, 1000).to(dtype)
    assert finite_check.block_is_finite(clean)
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoiled = clean.clone()
        spoiled[537] = bad
        assert not finite_check.block_is_finite(spoiled), bad
