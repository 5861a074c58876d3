"""Merges on worker threads: results in order, errors raised once, torch's thread count left as it was,
and the same files as a merge on one thread."""
import threading
import time

import pytest
import torch

from lora_factory import make_lora
from lora_merge_ext import api, merge, workers
from lora_merge_ext.errors import LoraMergeError


def test_results_keep_their_order_and_run_on_single_threaded_workers():
    seen = set()

    def square(x):
        seen.add((threading.get_ident(), torch.get_num_threads()))
        return x * x

    before = torch.get_num_threads()
    assert list(workers.map_in_workers(square, range(50), 3)) == [x * x for x in range(50)]
    assert {n for _, n in seen} == {1} and len(seen) >= 1
    assert torch.get_num_threads() == before


def test_an_error_in_a_worker_is_raised_and_the_rest_is_cancelled():
    ran = []

    def fail_at_three(x):
        ran.append(x)
        if x == 3:
            raise LoraMergeError("module 3 is bad")
        time.sleep(0.01)  # 2000 of these would take 10 s on two workers; cancelled, a handful run
        return x

    before = torch.get_num_threads()
    with pytest.raises(LoraMergeError, match="module 3 is bad"):
        list(workers.map_in_workers(fail_at_three, range(2000), 2))
    assert len(ran) < 2000 and torch.get_num_threads() == before


@pytest.mark.parametrize("mode", ["concat", "svd", "add"])
def test_workers_change_nothing_in_the_result(tmp_path, monkeypatch, mode):
    keep = lambda n: "layers_0_" in n or "attn1" in n or "resnets_0_conv1" in n
    a = make_lora(tmp_path / "a.safetensors", "sd15_locon", rank=4, alpha=2.0, seed=1, keep=keep, dtype=torch.float16)
    b = make_lora(tmp_path / "b.safetensors", "sd15_locon", rank=4, alpha=None, seed=2, keep=keep)
    rank = {"rank": 3} if mode == "svd" else {}
    many = api.merge([a, b], mode=mode, weights=[0.5, -1.5], **rank, dtype="bf16")
    monkeypatch.setattr(merge, "worker_count", lambda device=None: 1)
    one = api.merge([a, b], mode=mode, weights=[0.5, -1.5], **rank, dtype="bf16")
    assert list(many.lora.modules) == list(one.lora.modules)
    for name, m in one.lora.modules.items():
        other = many.lora.modules[name]
        if mode == "svd":  # LAPACK on one thread or two rounds differently
            assert torch.allclose(m.up2d() @ m.down2d(), other.up2d() @ other.down2d(), rtol=1e-2, atol=1e-3)
        else:
            assert torch.equal(m.up, other.up) and torch.equal(m.down, other.down)
    errors = [(r.error, o.error) for r, o in zip(many.report.rows, one.report.rows)]
    assert all((x is None and y is None) or x == pytest.approx(y, rel=1e-3, abs=1e-4) for x, y in errors)
