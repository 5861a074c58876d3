"""Atomic, protected output: inputs are never written over (whatever the spelling), existing files only
when asked, and a failed write (full disk, read-only folder) leaves the old file byte for byte and no
temporary file. OS failures are simulated with monkeypatch: tests run as root, where chmod does not bite.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from lora_factory import make_lora
from lora_merge_ext.atomic_write import TEMP_SUFFIX, write_bytes_atomic
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.safetensors_io import read_safetensors, save_safetensors_atomic, tensor_data_sha256

TENSORS = {"m.lora_down.weight": torch.arange(12.0).reshape(3, 4), "m.lora_up.weight": torch.ones(5, 3),
           "m.alpha": torch.tensor(3.0)}


def save(path, **kw):
    return save_safetensors_atomic(TENSORS, {"ss_network_dim": "3"}, path, **kw)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture()
def lora(tmp_path) -> Path:
    return make_lora(tmp_path / "input.safetensors", keep=lambda n: "layers_0_self_attn_q" in n, rank=2)


def refused(call, *words):
    with pytest.raises(LoraMergeError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# --- refusals before anything is written ----------------------------------------------------

def test_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"precious")
    refused(lambda: save(path), "exists", "out.safetensors")
    assert path.read_bytes() == b"precious" and listing(tmp_path) == ["out.safetensors"]
    digest = save(path, overwrite=True)
    assert tensor_data_sha256(path) == digest and listing(tmp_path) == ["out.safetensors"]


def test_refuses_dangling_symlink_unless_overwrite(tmp_path):
    link = tmp_path / "out.safetensors"
    link.symlink_to(tmp_path / "nowhere")
    refused(lambda: save(link), "exists")
    save(link, overwrite=True)
    assert not link.is_symlink() and read_safetensors(link)[0].keys() == TENSORS.keys()


def test_refuses_missing_folder(tmp_path):
    refused(lambda: save(tmp_path / "missing" / "out.safetensors"), "folder", "does not exist")
    assert listing(tmp_path) == []


def test_refuses_folder_as_target(tmp_path):
    (tmp_path / "out.safetensors").mkdir()
    refused(lambda: save(tmp_path / "out.safetensors", overwrite=True), "is a folder")
    assert listing(tmp_path / "out.safetensors") == []


def test_refuses_file_in_place_of_folder(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    refused(lambda: save(tmp_path / "file" / "out.safetensors"), "does not exist")


@pytest.mark.parametrize("spelling", ["same", "dotdot", "dot", "relative", "symlink-out", "symlink-folder",
                                      "hardlink", "symlink-protect"])
def test_never_writes_over_an_input(tmp_path, lora, monkeypatch, spelling):
    before = lora.read_bytes()
    (tmp_path / "sub").mkdir()
    protect = [lora]
    if spelling == "same":
        target = lora
    elif spelling == "dotdot":
        target = tmp_path / "sub" / ".." / lora.name
    elif spelling == "dot":
        target = Path(f"{tmp_path}/./{lora.name}")
    elif spelling == "relative":
        monkeypatch.chdir(tmp_path / "sub")
        target = Path("..") / lora.name
    elif spelling == "symlink-out":
        target = tmp_path / "sub" / "out.safetensors"
        target.symlink_to(lora)
    elif spelling == "symlink-folder":
        (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
        target = tmp_path / "alias" / lora.name
    elif spelling == "hardlink":
        target = tmp_path / "sub" / "hard.safetensors"
        os.link(lora, target)
    else:  # the input was given through a symlink, the output names the real file
        alias = tmp_path / "sub" / "alias.safetensors"
        alias.symlink_to(lora)
        protect, target = [alias], lora
    names = listing(tmp_path)
    for overwrite in (False, True):
        refused(lambda: save(target, overwrite=overwrite, protect=protect), "input")
    assert lora.read_bytes() == before and listing(tmp_path) == names


def test_protect_accepts_strings_and_missing_paths(tmp_path, lora):
    save(tmp_path / "out.safetensors", protect=[str(lora), str(tmp_path / "not-there.safetensors")])
    refused(lambda: save(tmp_path / "out2.safetensors", protect=[str(tmp_path / "out2.safetensors")]), "input")


# --- failures while writing -------------------------------------------------------------------

def _fail_on(monkeypatch, name: str, error: OSError, *, after=None):
    """Make os.<name> raise error (optionally after calling the real function, e.g. a partial write)."""
    real = getattr(os, name)

    def failing(*args, **kw):
        if after is not None:
            after(real, *args, **kw)
        raise error

    monkeypatch.setattr(os, name, failing)


def _temp_open_fails(monkeypatch, error):
    real_open = os.open

    def open_(path, flags, *args, **kw):
        if flags & os.O_CREAT:
            raise error
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_)


def _half_write(real, fd, data):
    real(fd, bytes(data[: max(1, len(data) // 2)]))


FAILURES = {
    "disk-full-mid-write": lambda mp: _fail_on(mp, "write", OSError(errno.ENOSPC, "No space left on device"),
                                               after=_half_write),
    "disk-full-at-fsync": lambda mp: _fail_on(mp, "fsync", OSError(errno.ENOSPC, "No space left on device")),
    "read-only-folder": lambda mp: _temp_open_fails(mp, OSError(errno.EROFS, "Read-only file system")),
    "permission-denied": lambda mp: _temp_open_fails(mp, PermissionError(errno.EACCES, "Permission denied")),
    "io-error-on-close": lambda mp: _fail_on(mp, "close", OSError(errno.EIO, "Input/output error"),
                                             after=lambda real, fd: real(fd)),
    "rename-fails": lambda mp: _fail_on(mp, "replace", OSError(errno.EBUSY, "Device or resource busy")),
}
REASONS = {"disk-full-mid-write": "no space left", "disk-full-at-fsync": "no space left",
           "read-only-folder": "read-only", "permission-denied": "permission denied",
           "io-error-on-close": "input/output error", "rename-fails": "busy"}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_overwrite_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.safetensors"
    save(path)
    before, names = path.read_bytes(), listing(tmp_path)
    FAILURES[failure](monkeypatch)
    refused(lambda: save_safetensors_atomic({"x": torch.zeros(50_000)}, {}, path, overwrite=True),
            "out.safetensors", "could not write", REASONS[failure])
    monkeypatch.undo()
    assert path.read_bytes() == before and listing(tmp_path) == names


@pytest.mark.parametrize("failure", [f for f in FAILURES if f not in ("rename-fails", "disk-full-at-fsync")])
def test_failed_new_file_leaves_nothing(tmp_path, monkeypatch, failure):
    FAILURES[failure](monkeypatch)
    refused(lambda: save(tmp_path / "new.safetensors"), "new.safetensors", REASONS[failure])
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_folder_without_hard_links_falls_back_to_rename(tmp_path, monkeypatch):
    _fail_on(monkeypatch, "link", OSError(errno.EPERM, "Operation not permitted"))
    digest = save(tmp_path / "out.safetensors")
    monkeypatch.undo()
    assert listing(tmp_path) == ["out.safetensors"] and tensor_data_sha256(tmp_path / "out.safetensors") == digest


def test_file_system_without_fsync_still_saves(tmp_path, monkeypatch):
    _fail_on(monkeypatch, "fsync", OSError(errno.EINVAL, "Invalid argument"))
    digest = save(tmp_path / "out.safetensors")
    monkeypatch.undo()
    assert listing(tmp_path) == ["out.safetensors"] and tensor_data_sha256(tmp_path / "out.safetensors") == digest


def test_file_that_appears_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    """Two merges racing for one name: the second finds the first's file and leaves it alone."""
    path = tmp_path / "out.safetensors"
    real_link = os.link

    def rival(src, dst, *args, **kw):
        if not path.exists():
            path.write_bytes(b"the other merge")
        return real_link(src, dst, *args, **kw)

    monkeypatch.setattr(os, "link", rival)
    refused(lambda: save(path), "exists")
    monkeypatch.undo()
    assert path.read_bytes() == b"the other merge" and listing(tmp_path) == ["out.safetensors"]


def test_only_a_replaced_file_is_flushed_to_disk(tmp_path, monkeypatch):
    """fsync guards an existing file against a power cut mid-replace; a new file has nothing at stake."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "out.safetensors"
    save(path)
    assert synced == []
    save_safetensors_atomic({"x": torch.ones(3)}, {}, path, overwrite=True)
    assert len(synced) == 2  # the new data before the rename, then the folder after it
    assert read_safetensors(path)[0]["x"].tolist() == [1.0, 1.0, 1.0]


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ロラ_合成 ✨.safetensors", "with space & 'quotes'.safetensors",
                                  "new\nline.safetensors", "-leading-dash.safetensors", ".hidden.safetensors",
                                  "é" * 120 + ".safetensors"])
def test_unusual_names(tmp_path, name):
    path = tmp_path / name
    digest = save(path)
    assert listing(tmp_path) == [name] and tensor_data_sha256(path) == digest
    message = refused(lambda: save(path), "exists")
    assert "\n" not in message


def test_longest_legal_name_and_one_byte_more(tmp_path):
    suffix = ".safetensors"
    longest = "a" * (255 - len(suffix)) + suffix
    save(tmp_path / longest)  # the temporary name must not be longer than the final one
    assert listing(tmp_path) == [longest]
    refused(lambda: save(tmp_path / ("b" * (256 - len(suffix)) + suffix)), "256 bytes", "255")
    assert listing(tmp_path) == [longest]


def test_unicode_name_limit_counts_bytes(tmp_path):
    suffix = ".safetensors"  # 12 bytes; "日" is 3 bytes in UTF-8
    fits = "日" * ((255 - len(suffix)) // 3) + suffix
    save(tmp_path / fits)
    too_long = "日" * ((255 - len(suffix)) // 3 + 1) + suffix
    refused(lambda: save(tmp_path / too_long), "bytes")
    assert listing(tmp_path) == [fits]


# --- the written file -------------------------------------------------------------------------

def test_written_file_has_umask_mode_and_exact_bytes(tmp_path):
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "a.bin", b"hello")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


def test_large_write_round_trips(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    write_bytes_atomic(tmp_path / "big.bin", memoryview(data))
    assert (tmp_path / "big.bin").read_bytes() == data
    assert not [n for n in listing(tmp_path) if n.endswith(TEMP_SUFFIX)]


def test_saved_hash_matches_written_file(tmp_path, lora):
    tensors, metadata = read_safetensors(lora)
    out = tmp_path / "copy.safetensors"
    digest = save_safetensors_atomic(tensors, metadata, out, protect=[lora])
    again, meta = read_safetensors(out)
    assert meta["sshs_model_hash"] == digest == tensor_data_sha256(out) == tensor_data_sha256(lora)
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_a_killed_writes_old_temporary_file_is_removed_by_the_next_write(tmp_path):
    import time
    from lora_merge_ext import atomic_write
    old = tmp_path / f".{'ab' * 8}{TEMP_SUFFIX}"
    recent = tmp_path / f".{'cd' * 8}{TEMP_SUFFIX}"  # may be another process's write in progress
    other = tmp_path / f".notours{TEMP_SUFFIX}"
    for path in (old, recent, other):
        path.write_bytes(b"partial")
    long_ago = time.time() - atomic_write.STALE_AFTER_S - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    write_bytes_atomic(tmp_path / "new.bin", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, other.name, "new.bin"])


def test_preallocate_reserves_the_whole_file_where_the_file_system_can(tmp_path):
    from lora_merge_ext.atomic_write import preallocate
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    try:
        preallocate(fd, 3 << 20)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_size == 0:
        pytest.skip("this file system (or platform) does not preallocate")
    assert st.st_size == 3 << 20 and st.st_blocks * 512 >= 3 << 20
