"""The streamed concat (api.merge_to_file): the same file as merge() then save(), byte for byte, for
every kind of input it streams; the inputs it cannot stream go the ordinary way; failures leave nothing."""
import hashlib
import json
import os
import struct

import pytest
import torch

from delta_oracle import dense_deltas
from lora_factory import make_lora, make_tensors, to_peft, write_lora
from lora_merge_ext import api, hash_memo
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.lazy_lora import open_lazy
from lora_merge_ext.loading import load_lora
from lora_merge_ext.ordered_writer import BUFFER_BYTES, OrderedWriter

SD15_FEW = lambda n: any(s in n for s in ("layers_3_mlp_fc1", "attn2_to_k", "proj_in", "conv1", "conv_shortcut"))
SDXL_FEW = lambda n: any(s in n for s in ("attn2_to_k", "te1_text_model_encoder_layers_0_",
                                          "te2_text_model_encoder_layers_1_mlp"))


def split(path):
    """(header JSON without the provenance's creation time, data section bytes)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    prov = json.loads(header["__metadata__"]["ljl_provenance"])
    del prov["created"]
    header["__metadata__"]["ljl_provenance"] = prov
    return header, raw[8 + n:]


def no_in_memory_merge(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("merged in memory, not streamed")
    monkeypatch.setattr(api, "merge", refuse)


def in_memory(inputs, out, **kw):
    result = api.merge(inputs, **{k: v for k, v in kw.items() if k != "overwrite"})
    return api.save(result.lora, out, dtype=kw.get("dtype", "fp32"))


def assert_same_file(a, b):
    head_a, data_a = split(a)
    head_b, data_b = split(b)
    assert head_a == head_b
    assert data_a == data_b
    assert head_a["__metadata__"]["sshs_model_hash"] == hashlib.sha256(data_a).hexdigest()


def _cases(tmp):
    sd15 = lambda name, **kw: make_lora(tmp / name, "sd15_locon", keep=SD15_FEW, **kw)
    peft_xl = write_lora(tmp / "peft_xl.safetensors",
                         to_peft(make_tensors("sdxl_lora", rank=6, seed=9, keep=SDXL_FEW), "sdxl"), "sdxl")
    return {
        "locon fp32, negative weight": ([sd15("a.safetensors", rank=4, seed=1), sd15("b.safetensors", rank=8, seed=2)],
                                        dict(weights=[1.0, -0.5], dtype="fp32")),
        "fp16 and bf16 in, fp16 out": ([sd15("h.safetensors", rank=4, seed=3, dtype=torch.float16),
                                        sd15("g.safetensors", rank=5, seed=4, dtype=torch.bfloat16)],
                                       dict(weights=[0.7, 1.3], dtype="fp16")),
        "partial overlap, no alpha, three inputs, lbw": (
            [sd15("p.safetensors", rank=3, seed=5, alpha=None),
             make_lora(tmp / "q.safetensors", "sd15_lora", rank=7, seed=6, keep=lambda n: "attn2_to_k" in n),
             sd15("r.safetensors", rank=2, seed=7, alpha=1.0)],
            dict(weights=[1.0, 2.0, -1.0], lbw=["", "0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0.5", "MIDD"], dtype="bf16")),
        "SDXL kohya and PEFT, bf16 out": ([make_lora(tmp / "k_xl.safetensors", "sdxl_lora", rank=4, seed=8,
                                                     keep=SDXL_FEW, metadata={"sshs_model_hash": "AB" * 32}),
                                           peft_xl], dict(weights=[1.0, 0.25], dtype="bf16")),  # a declared hash
    }


CASES = ["locon fp32, negative weight", "fp16 and bf16 in, fp16 out", "partial overlap, no alpha, three inputs, lbw",
         "SDXL kohya and PEFT, bf16 out"]


@pytest.mark.parametrize("case", CASES)
def test_streamed_file_is_the_in_memory_file(tmp_path, monkeypatch, case):
    inputs, kw = _cases(tmp_path)[case]
    expected = in_memory(inputs, tmp_path / "memory.safetensors", **kw)
    no_in_memory_merge(monkeypatch)
    saved, report = api.merge_to_file(inputs, tmp_path / "streamed.safetensors", **kw)
    assert_same_file(saved.path, expected.path)
    assert saved.sha256 == expected.sha256 and saved.size == os.path.getsize(saved.path)
    assert not report.measured and len(report.rows) == len(load_lora(saved.path).modules)


@pytest.mark.parametrize("cores", [1, 4, 9])
def test_streamed_file_is_the_same_on_any_number_of_cores(tmp_path, monkeypatch, cores):
    import lora_merge_ext.concat_stream as concat_stream
    inputs, kw = _cases(tmp_path)["partial overlap, no alpha, three inputs, lbw"]
    expected = in_memory(inputs, tmp_path / "memory.safetensors", **kw)
    monkeypatch.setattr(concat_stream, "worker_count", lambda: cores)  # cores - 1 fill workers beyond two
    monkeypatch.setattr(concat_stream, "BUFFER_BYTES", 1 << 16)  # many pieces, a few modules larger than one
    no_in_memory_merge(monkeypatch)
    saved, _ = api.merge_to_file(inputs, tmp_path / "streamed.safetensors", **kw)
    assert_same_file(saved.path, expected.path)


def test_without_positioned_io_the_concat_is_merged_in_memory(tmp_path, monkeypatch):
    import lora_merge_ext.concat_stream as concat_stream
    inputs, kw = _cases(tmp_path)["fp16 and bf16 in, fp16 out"]
    expected = in_memory(inputs, tmp_path / "memory.safetensors", **kw)
    monkeypatch.setattr(concat_stream, "AVAILABLE", False)  # Windows has no os.pread / os.pwrite
    monkeypatch.setattr(api, "_stream_concat", None)  # and so never reaches the streamed path
    saved, report = api.merge_to_file(inputs, tmp_path / "out.safetensors", **kw)
    assert_same_file(saved.path, expected.path)


@pytest.mark.parametrize("case", ["fp16 and bf16 in, fp16 out", "partial overlap, no alpha, three inputs, lbw"])
def test_streamed_report_is_the_in_memory_report(tmp_path, monkeypatch, case):
    inputs, kw = _cases(tmp_path)[case]
    want = api.merge(inputs, report=True, **kw).report
    expected = in_memory(inputs, tmp_path / "memory.safetensors", **kw)
    no_in_memory_merge(monkeypatch)
    saved, got = api.merge_to_file(inputs, tmp_path / "streamed.safetensors", report=True, **kw)
    assert_same_file(saved.path, expected.path)  # measuring changes nothing in the file
    assert got.measured and [(r.module, r.rank) for r in got.rows] == [(r.module, r.rank) for r in want.rows]
    for g, w in zip(got.rows, want.rows):
        assert g.error == pytest.approx(w.error, rel=1e-9, abs=1e-15), g.module
    assert 0.0 < got.summary()["max_error"] < 1e-2  # half-precision round-off, not zero and not more


def test_streamed_concat_is_the_weighted_sum(tmp_path, monkeypatch):
    small = lambda n: "layers_3_mlp_fc1" in n or "down_blocks_0_resnets_0_conv" in n or "up_blocks_3_attentions_2" in n
    inputs = [make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, seed=1, keep=small),
              make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=8, seed=2, alpha=None,
                        keep=lambda n: small(n) and "conv2" not in n)]
    kw = dict(weights=[1.0, -0.5], dtype="fp32")
    no_in_memory_merge(monkeypatch)
    saved, _ = api.merge_to_file(inputs, tmp_path / "out.safetensors", **kw)
    got, parts = dense_deltas(saved.path), [dense_deltas(p) for p in inputs]
    assert set(got) == set(parts[0]) | set(parts[1])
    for name, delta in got.items():
        want = sum(w * p[name] for w, p in zip(kw["weights"], parts) if name in p)
        assert torch.allclose(delta, want, rtol=1e-5, atol=1e-6), name


def test_provenance_hashes_are_the_inputs_addnet_hashes(tmp_path, monkeypatch):
    inputs, kw = _cases(tmp_path)["fp16 and bf16 in, fp16 out"]
    no_in_memory_merge(monkeypatch)
    for k in range(2):  # a first merge hashes the inputs; the second may remember them
        saved, _ = api.merge_to_file(inputs, tmp_path / f"out{k}.safetensors", **kw)
        prov = split(saved.path)[0]["__metadata__"]["ljl_provenance"]
        for p, entry in zip(inputs, prov["inputs"]):
            raw = open(p, "rb").read()
            n = struct.unpack("<Q", raw[:8])[0]
            assert entry["sha256"] == hashlib.sha256(raw[8 + n:]).hexdigest()


def test_tucker_and_pickled_inputs_are_merged_in_memory(tmp_path):
    tucker = make_lora(tmp_path / "t.safetensors", "sd15_locon", rank=4, seed=1, keep=SD15_FEW, tucker=True)
    plain = make_lora(tmp_path / "p.safetensors", "sd15_locon", rank=4, seed=2, keep=SD15_FEW)
    pickled = tmp_path / "k.pt"
    torch.save(make_tensors("sd15_locon", rank=3, seed=3, keep=SD15_FEW), pickled)
    assert open_lazy(tucker) is None and open_lazy(pickled) is None and open_lazy(plain) is not None
    for other in (tucker, pickled):
        expected = in_memory([other, plain], tmp_path / f"m_{other.stem}.safetensors", weights=[1, 2])
        saved, _ = api.merge_to_file([other, plain], tmp_path / f"s_{other.stem}.safetensors", weights=[1, 2])
        assert_same_file(saved.path, expected.path)


def test_nan_input_is_refused_as_load_lora_refuses_it(tmp_path):
    tensors = make_tensors("sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key][0, 0] = float("nan")
    bad = write_lora(tmp_path / "bad.safetensors", tensors)
    good = make_lora(tmp_path / "good.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)
    with pytest.raises(LoraMergeError) as loader:
        load_lora(bad)
    with pytest.raises(LoraMergeError) as merged:
        api.merge_to_file([good, bad], tmp_path / "out.safetensors")
    assert str(merged.value) == str(loader.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "good.safetensors"]


def test_values_too_large_for_fp16_are_refused_streamed_or_in_memory(tmp_path):
    """An overflow would write Inf, which no loader (this one included) accepts: the same one-line
    error either way, and nothing written."""
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)
    kw = dict(weights=[1e12, 1.0], dtype="fp16")
    with pytest.raises(LoraMergeError, match="values too large for fp16 in lora_") as memory:
        in_memory([a, b], tmp_path / "m.safetensors", **kw)
    with pytest.raises(LoraMergeError, match="values too large for fp16 in lora_") as streamed:
        api.merge_to_file([a, b], tmp_path / "s.safetensors", **kw)
    assert str(memory.value).split(": ", 1)[1] == str(streamed.value).split(": ", 1)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
    saved, _ = api.merge_to_file([a, b], tmp_path / "s.safetensors", weights=[1e12, 1.0], dtype="fp32")
    assert load_lora(saved.path).modules  # fp32 holds it


def test_an_input_rewritten_during_the_merge_is_merged_as_it_is_now(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)
    replacement = make_lora(tmp_path / "b2.safetensors", "sd15_lora", rank=4, seed=3, keep=SD15_FEW).read_bytes()
    rewritten = []

    def rewrite_b(done, total, name):
        if not rewritten:
            with open(b, "r+b") as f:  # in place: same file, new bytes
                f.write(replacement)
            rewritten.append(name)

    saved, _ = api.merge_to_file([a, b], tmp_path / "out.safetensors", progress=rewrite_b)
    assert rewritten
    expected = in_memory([a, b], tmp_path / "m.safetensors")
    assert_same_file(saved.path, expected.path)


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)

    def stop(done, total, name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.merge_to_file([a, b], tmp_path / "out.safetensors", progress=stop)
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]


def test_existing_output_and_inputs_are_protected(tmp_path):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)
    before = a.read_bytes()
    with pytest.raises(LoraMergeError, match="input"):
        api.merge_to_file([a, b], a, overwrite=True)
    (tmp_path / "out.safetensors").write_bytes(b"keep")
    with pytest.raises(LoraMergeError, match="exists"):
        api.merge_to_file([a, b], tmp_path / "out.safetensors")
    assert a.read_bytes() == before and (tmp_path / "out.safetensors").read_bytes() == b"keep"


def test_bad_shapes_are_refused_with_load_lora_words(tmp_path):
    tensors = make_tensors("sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = tensors[key][:, :3].contiguous()
    bad = write_lora(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(LoraMergeError) as loader:
        load_lora(bad)
    with pytest.raises(LoraMergeError) as lazy:
        open_lazy(bad)
    assert str(lazy.value) == str(loader.value)


@pytest.mark.parametrize("workers", [0, 3])
def test_ordered_writer_writes_and_hashes_pieces_of_any_size(tmp_path, workers):
    gen = torch.Generator().manual_seed(0)
    sizes = [3, BUFFER_BYTES - 1, 17, 2 * BUFFER_BYTES + 5, 0, BUFFER_BYTES, 1] + [BUFFER_BYTES // 2] * 9
    pieces = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen) for n in sizes]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        seen = []
        writer = OrderedWriter(fd, 11, workers, check=lambda piece: seen.append(piece.numel()) or piece.numel() != 17)
        for piece in pieces:
            writer.put(piece.numel(), lambda out, piece=piece: out.copy_(piece))
        digest = writer.finish()
    finally:
        os.close(fd)
    expected = b"".join(p.numpy().tobytes() for p in pieces)
    assert (tmp_path / "f").read_bytes() == b"\0" * 11 + expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert not writer.passed and 17 in seen  # the bad piece was checked and refused
    if workers == 0:
        assert seen[:3] == sizes[:3]  # in the caller's thread, every piece in order until one fails


@pytest.mark.parametrize("workers", [0, 3])
def test_ordered_writer_raises_what_a_fill_raised(tmp_path, workers):
    def fail(out):
        raise ValueError("fill failed")

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        writer = OrderedWriter(fd, 0, workers)
        with pytest.raises(ValueError, match="fill failed"):
            writer.put(5, fail)
            writer.finish()
        writer.abandon()
    finally:
        os.close(fd)


def test_cli_merge_streams(tmp_path, monkeypatch, capsys):
    from lora_merge_ext.cli import main
    inputs, _ = _cases(tmp_path)["fp16 and bf16 in, fp16 out"]
    expected = in_memory(inputs, tmp_path / "m.safetensors", weights=[1, -0.5], dtype="fp16")
    no_in_memory_merge(monkeypatch)
    hash_memo.forget_all()
    assert main(["merge", *map(str, inputs), "-o", str(tmp_path / "c.safetensors"), "--weights=1,-0.5",
                 "--dtype", "fp16", "--quiet"]) == 0
    assert_same_file(tmp_path / "c.safetensors", expected.path)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_concat_round_off_is_the_dense_error(dtype):
    """concat_round_off against ‖up·down − T‖/‖T‖ built densely in float64, for each output dtype,
    with a negative coefficient and factors stored in half precision and float32."""
    from lora_merge_ext.factor_math import concat_parts, concat_round_off
    g = torch.Generator().manual_seed(5)
    parts = [(torch.randn(320, 4, generator=g).half(), torch.randn(4, 768, generator=g).half(), 0.37),
             (torch.randn(320, 8, generator=g), torch.randn(8, 768, generator=g) * 1e-2, -2.5)]
    up, down = concat_parts(parts, dtype)
    target = sum(c * u.double() @ d.double() for u, d, c in parts)
    dense = float((up.double() @ down.double() - target).norm() / target.norm())
    assert concat_round_off(parts, up, down) == pytest.approx(dense, rel=1e-3)
    assert 0.0 < dense < {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6}[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_alphas_of_every_dtype_read_as_load_lora_reads_them(tmp_path, dtype, shape):
    """open_lazy reads the usual scalar alphas without torch: the same values as load_lora."""
    from safetensors.torch import save_file
    values = [3.0, 0.1, -2.5, 65504.0, 1e-3, 7.0]
    tensors = {}
    for k, a in enumerate(values):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn{k}_to_q"
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, 320)
        tensors[f"{name}.lora_up.weight"] = torch.randn(320, 2)
        tensors[f"{name}.alpha"] = torch.tensor(a).to(dtype).reshape(shape)
    path = tmp_path / "alphas.safetensors"
    save_file(tensors, str(path))
    lazy = open_lazy(path)
    try:
        got = {n: m.alpha for n, m in lazy.modules.items()}
    finally:
        lazy.close()
    want = {n: m.alpha for n, m in load_lora(path).modules.items()}
    assert got == want and len(got) == len(values)


@pytest.fixture()
def file_size_limit():
    """Set a file size limit (RLIMIT_FSIZE) for the test, with SIGXFSZ ignored so that a write past it
    fails with EFBIG, as on a disk that is too full, instead of killing the process."""
    resource = pytest.importorskip("resource")
    import signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_an_output_with_no_room_fails_before_any_work_and_leaves_nothing(tmp_path, file_size_limit):
    from lora_merge_ext.atomic_write import preallocate
    with open(tmp_path / "probe", "wb") as probe:
        preallocate(probe.fileno(), 4096)
    if (tmp_path / "probe").stat().st_size == 0:
        pytest.skip("this file system does not preallocate: the write fails later, as before")
    (tmp_path / "probe").unlink()
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SD15_FEW)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SD15_FEW)
    done = []
    file_size_limit(a.stat().st_size)  # the output is about twice that
    with pytest.raises(LoraMergeError) as info:
        api.merge_to_file([a, b], tmp_path / "out.safetensors", progress=lambda *step: done.append(step))
    assert str(info.value).startswith(f"{tmp_path / 'out.safetensors'}: could not write the file: File too large")
    assert done == []  # refused when the space was reserved, before the first module was merged
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "b.safetensors"]
