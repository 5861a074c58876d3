"""The merge's single output buffer: huge-page byte buffers, the factor arena laid out in file order,
and saving from it in large pieces to the very bytes the safetensors library writes."""
from __future__ import annotations

import hashlib
import struct

import pytest
import safetensors.torch
import torch

from lora_factory import make_lora
from lora_merge_ext import api, byte_buffer as byte_buffer_module
from lora_merge_ext.byte_buffer import HUGE_PAGE, byte_buffer
from lora_merge_ext.factor_arena import FactorArena
from lora_merge_ext.factor_math import concat_parts
from lora_merge_ext.safetensors_write import data_views, save_safetensors_atomic, write_position

PARTIAL = lambda n: "down_blocks_1" in n or "layers_2_" in n  # noqa: E731


def data_section(path) -> bytes:
    raw = open(path, "rb").read()
    return raw[8 + struct.unpack("<Q", raw[:8])[0]:]


# --- byte_buffer ------------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes", [0, 1, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 5])
def test_byte_buffer_has_the_size_asked_and_holds_what_is_written(nbytes):
    a, b = byte_buffer(nbytes), byte_buffer(nbytes)
    assert a.dtype == torch.uint8 and a.shape == (nbytes,) and a.device.type == "cpu"
    a.fill_(7)
    b.fill_(9)
    assert bool((a == 7).all()) and bool((b == 9).all())  # two buffers never share memory


def test_byte_buffer_falls_back_where_huge_pages_are_not_offered(monkeypatch):
    monkeypatch.setattr(byte_buffer_module, "_ADVICE", None)
    t = byte_buffer(4 * HUGE_PAGE)
    t[-1] = 3
    assert t.shape == (4 * HUGE_PAGE,) and int(t[-1]) == 3


def test_byte_buffer_outlives_its_mapping_name():
    view = byte_buffer(2 * HUGE_PAGE)[HUGE_PAGE:].view(torch.float32)  # the base tensor is dropped at once
    view.copy_(torch.arange(view.numel(), dtype=torch.float32))
    assert float(view[-1]) == view.numel() - 1


# --- FactorArena ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_arena_is_the_data_section_safetensors_writes_for_its_views(dtype):
    """Factors and float32 alphas lie back to back in the order safetensors writes them (fp32: each
    alpha before its factors; fp16/bf16: all alphas first), so the arena's bytes are the data section."""
    shapes = {"lora_unet_b": ((320, 6), (6, 2880)), "lora_te_a": ((768, 4), (4, 768)),
              "lora_unet_a_b": ((5, 1), (1, 3))}
    alphas = {"lora_unet_b": 6.0, "lora_te_a": 4.0, "lora_unet_a_b": 1.0}
    arena = FactorArena(shapes, dtype, alphas)
    tensors = {}
    for name, (up_shape, down_shape) in shapes.items():
        up, down = arena.factors(name)
        assert up.shape == up_shape and down.shape == down_shape and up.dtype == down.dtype == dtype
        assert up.is_contiguous() and down.is_contiguous()
        up.copy_(torch.randn(up_shape))
        down.copy_(torch.randn(down_shape))
        tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"] = up, down
        tensors[f"{name}.alpha"] = torch.tensor(alphas[name], dtype=torch.float32)
    reference = safetensors.torch.save(tensors)
    assert arena.buffer.numpy().tobytes() == reference[8 + struct.unpack("<Q", reference[:8])[0]:]
    assert arena.fill_order() == ["lora_te_a", "lora_unet_a_b", "lora_unet_b"]


def test_arena_hash_follows_the_fill_in_any_order_and_stops_when_abandoned():
    shapes = {f"m{k}": ((30, 2), (2, 40)) for k in range(5)}
    arena = FactorArena(shapes, torch.float16, {name: 2.0 for name in shapes})
    arena.start_hash()
    for k, name in enumerate(reversed(arena.fill_order())):  # the hash must wait for m0 … m4 in turn
        up, down = arena.factors(name)
        up.fill_(k)
        down.fill_(-k)
        arena.mark_filled(name)
    hashed = arena.sealed_hash()
    assert hashed.hexdigest() == hashlib.sha256(arena.buffer.numpy().tobytes()).hexdigest()

    stalled = FactorArena(shapes, torch.float32, {name: 2.0 for name in shapes})
    stalled.start_hash()
    stalled.mark_filled("m0")
    stalled.abandon()  # m1 never comes
    stalled._hasher.join(timeout=60)
    assert not stalled._hasher.is_alive()


def test_concat_into_arena_equals_concat_into_fresh_tensors():
    gen = torch.Generator().manual_seed(3)
    parts = [(torch.randn(40, 3, generator=gen), torch.randn(3, 50, generator=gen), -0.7),
             (torch.randn(40, 5, generator=gen).half(), torch.randn(5, 50, generator=gen).half(), 2.0)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        arena = FactorArena({"m": ((40, 8), (8, 50))}, dtype, {"m": 8.0})
        up, down = concat_parts(parts, dtype, arena.factors("m"))
        fresh_up, fresh_down = concat_parts(parts, dtype)
        assert up.data_ptr() == arena.factors("m")[0].data_ptr()
        assert torch.equal(up, fresh_up) and torch.equal(down, fresh_down)


# --- saving from views ----------------------------------------------------------------------

def test_data_views_join_only_neighbours_in_one_buffer():
    buffer = torch.arange(24, dtype=torch.float32)
    other = torch.ones(4)
    prepared = [("a", buffer[:4]), ("b", buffer[4:10].reshape(2, 3)), ("c", other), ("d", buffer[10:12]),
                ("e", buffer[20:24]), ("f", torch.empty(0)), ("g", buffer[24:])]
    views = data_views(prepared)
    assert [len(v) for v in views] == [40, 16, 8, 16]
    assert b"".join(bytes(v) for v in views) == b"".join(t.numpy().tobytes() for _, t in prepared)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_merged_file_is_what_safetensors_writes(tmp_path, dtype):
    """fp32 puts each alpha between factors, fp16/bf16 put the alphas first: the bytes and the hash
    agree with the safetensors library either way, with modules in one input only as well."""
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, seed=1, keep=PARTIAL)
    b = make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=6, alpha=None, seed=2,
                  keep=lambda n: PARTIAL(n) and "attn1" not in n)
    merged = api.merge([a, b], weights=[0.5, -1.25], dtype=dtype).lora
    tensors = api.state_dict(merged, api.torch_dtype(dtype))
    saved = api.save(merged, tmp_path / "out.safetensors", dtype=dtype)
    reference = safetensors.torch.save(tensors)
    reference = reference[8 + struct.unpack("<Q", reference[:8])[0]:]
    assert data_section(saved.path) == reference
    assert saved.sha256 == hashlib.sha256(reference).hexdigest()


def test_saving_keeps_each_tensor_even_when_one_buffer_holds_them_all(tmp_path):
    buffer = torch.arange(3000, dtype=torch.float32)
    tensors = {"z": buffer[:1000], "y": buffer[1000:2000].reshape(10, 100), "x": buffer[2000:]}
    path = tmp_path / "t.safetensors"
    save_safetensors_atomic(tensors, {}, path)
    back = safetensors.torch.load_file(path)
    for key, t in tensors.items():
        assert torch.equal(back[key], t), key


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_hash_worked_out_while_merging_is_used_only_for_the_bytes_it_covers(tmp_path, dtype):
    """A concat's hash is computed while it merges; save uses it when the data written is the arena
    (same dtype), and hashes again when the data differs (other dtype, factors changed after the merge)."""
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=PARTIAL)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=6, seed=2, keep=PARTIAL)
    merged = api.merge([a, b], weights=[1.0, -0.5], dtype=dtype).lora
    views = data_views(_write_sorted(api.state_dict(merged, api.torch_dtype(dtype))))
    assert merged.data_hash.covers(views)
    assert not merged.data_hash.covers(views[1:]) and not merged.data_hash.covers([*views, memoryview(b"x")])

    saved = api.save(merged, tmp_path / "same.safetensors", dtype=dtype)
    assert saved.sha256 == hashlib.sha256(data_section(saved.path)).hexdigest() == merged.data_hash.hexdigest()

    other = api.save(merged, tmp_path / "other.safetensors", dtype="bf16")
    assert other.sha256 == hashlib.sha256(data_section(other.path)).hexdigest() != saved.sha256

    name = next(iter(merged.modules))
    merged.modules[name].up.mul_(2)  # a torch write into the arena after the merge
    assert not merged.data_hash.covers(data_views(_write_sorted(api.state_dict(merged, api.torch_dtype(dtype)))))
    changed = api.save(merged, tmp_path / "changed.safetensors", dtype=dtype)
    assert changed.sha256 == hashlib.sha256(data_section(changed.path)).hexdigest() != saved.sha256
    assert safetensors.torch.load_file(changed.path)[f"{name}.lora_up.weight"].equal(merged.modules[name].up)


def _write_sorted(tensors):
    return sorted(tensors.items(), key=lambda kv: write_position(kv[0], kv[1].dtype))
