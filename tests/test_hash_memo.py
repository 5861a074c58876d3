"""Input hashes remembered between merges: reused only while the file is provably the same."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest

from lora_factory import make_lora
from lora_merge_ext import api, hash_memo
from lora_merge_ext import safetensors_io as sio
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.loading import load_lora

SMALL = lambda n: "layers_0_" in n or "down_blocks_0" in n  # noqa: E731


def data_hash(path) -> str:
    raw = open(path, "rb").read()
    return hashlib.sha256(raw[8 + struct.unpack("<Q", raw[:8])[0]:]).hexdigest()


@pytest.fixture
def memo(monkeypatch):
    """An empty memo that takes files just written (tests cannot wait for them to settle)."""
    hash_memo.forget_all()
    monkeypatch.setattr(hash_memo, "SETTLED_NS", 0)
    yield
    hash_memo.forget_all()


def provenance_hashes(lora) -> list[str]:
    return [i["sha256"] for i in json.loads(lora.metadata["ljl_provenance"])["inputs"]]


def test_a_second_merge_of_the_same_files_reuses_their_hashes(tmp_path, memo):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SMALL)
    first = api.merge([a, b]).lora
    assert provenance_hashes(first) == [data_hash(a), data_hash(b)]
    again = load_lora(a)
    assert again.digest._thread is None  # recalled, not hashed
    assert again.file_hash() == data_hash(a)
    assert provenance_hashes(api.merge([a, b]).lora) == [data_hash(a), data_hash(b)]


def test_a_file_rewritten_with_the_same_size_is_hashed_again(tmp_path, memo):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    old = load_lora(a).file_hash()
    st = os.stat(a)
    raw = bytearray(open(a, "rb").read())
    raw[-1] ^= 0x01  # the last byte of the data: same size, other content
    with open(a, "r+b") as f:
        f.write(raw)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # as any later write would
    fresh = load_lora(a)
    assert fresh.digest._thread is not None
    assert fresh.file_hash() == data_hash(a) != old
    assert sio.tensor_data_sha256(a) == data_hash(a)


def test_a_file_changed_just_before_it_is_read_is_not_remembered(tmp_path):
    hash_memo.forget_all()
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    assert load_lora(a).file_hash() == data_hash(a)
    assert hash_memo.recall(hash_memo.identity(os.stat(a))) is None  # written less than SETTLED_NS ago
    assert sio.tensor_data_sha256(a) == data_hash(a)
    assert hash_memo.recall(hash_memo.identity(os.stat(a))) is None


def test_inspect_hash_is_remembered_for_the_merge(tmp_path, memo):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    assert sio.tensor_data_sha256(a) == data_hash(a)
    loaded = load_lora(a)
    assert loaded.digest._thread is None and loaded.file_hash() == data_hash(a)


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, memo, monkeypatch):
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    real_read = sio._read_into

    def read_then_touch(f, buf, path, what):
        real_read(f, buf, path, what)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 5_000_000))  # another program writes meanwhile

    monkeypatch.setattr(sio, "_read_into", read_then_touch)
    with pytest.raises(LoraMergeError, match="changed while it was being read"):
        load_lora(a)
    assert hash_memo.recall(hash_memo.identity(os.stat(a))) is None


def test_an_unchanged_header_is_read_once_and_a_rewritten_one_again(tmp_path, memo, monkeypatch):
    """The streamed concat remembers each input's header description with its hash: a merge of the
    same files again reads no header; a file written since is read afresh and merged as it is now."""
    from lora_merge_ext import lazy_lora
    a = make_lora(tmp_path / "a.safetensors", "sd15_lora", rank=4, seed=1, keep=SMALL)
    b = make_lora(tmp_path / "b.safetensors", "sd15_lora", rank=4, seed=2, keep=SMALL)
    read = []
    real = lazy_lora.parse_open_header
    monkeypatch.setattr(lazy_lora, "parse_open_header", lambda f, size, path: read.append(path) or real(f, size, path))
    first, _ = api.merge_to_file([a, b], tmp_path / "1.safetensors")
    second, _ = api.merge_to_file([a, b], tmp_path / "2.safetensors")
    assert read == [str(a), str(b)]
    assert first.sha256 == second.sha256
    make_lora(tmp_path / "c.safetensors", "sd15_lora", rank=3, seed=3, keep=SMALL).replace(b)  # b is now another file
    third, _ = api.merge_to_file([a, b], tmp_path / "3.safetensors")
    assert read == [str(a), str(b), str(b)]
    expected = api.merge([a, b]).lora
    assert third.sha256 == api.save(expected, tmp_path / "4.safetensors").sha256
