"""Write a file atomically: a temporary file in the same folder, then a rename.

Either the new file is complete at `path`, or `path` is exactly as it was and no temporary file is
left behind. Refuses (before writing anything) a target that is one of the protected paths (inputs),
an existing file unless overwrite, a missing folder, a folder as target, and a name too long.
When an existing file is replaced, the new data is flushed to disk (fsync) before the rename, so a
power cut cannot lose both versions; a new file is not flushed (nothing existing is at stake).
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Iterable

from .errors import LoraMergeError
from .safetensors_header import show

TEMP_SUFFIX = ".lora-merge.tmp"


def _same_file(a: Path, b: Path) -> bool:
    """True when a and b name the same file: same resolved path, or the same inode (hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_length(path: Path) -> None:
    """Refuse a name longer than its folder allows (the nearest existing folder, for one still to be
    created): the file system would refuse it only when it is written, with a less helpful error."""
    folder = path.parent
    while not os.path.isdir(folder) and folder.parent != folder:
        folder = folder.parent
    name_bytes, name_max = len(os.fsencode(path.name)), _name_max(folder)
    if name_bytes > name_max:
        raise LoraMergeError(f"{show(path, 400)}: file name is {name_bytes} bytes, longer than the {name_max} "
                             "this folder allows")


def check_target(path: os.PathLike | str, *, overwrite: bool = False, protect: Iterable = ()) -> Path:
    """Refuse a target path that must not be written; returns it as a Path."""
    target = Path(path)
    where = show(target, 400)
    folder = target.parent
    if target.name in ("", ".", ".."):
        raise LoraMergeError(f"{where}: not a file name")
    check_name_length(target)
    try:
        for guarded in protect:
            if _same_file(target, Path(guarded)):
                raise LoraMergeError(f"{where}: refusing to write over an input file ({show(guarded, 200)})")
        if not folder.is_dir():
            raise LoraMergeError(f"{where}: folder {show(folder, 200)} does not exist")
        if target.is_dir():
            raise LoraMergeError(f"{where}: is a folder, expected a file name")
        if os.path.lexists(target) and not overwrite:
            raise LoraMergeError(f"{where}: file exists (choose another name or allow overwrite)")
    except OSError as e:
        raise LoraMergeError(f"{where}: cannot use this path: {show(e.strerror or e, 200)}") from None
    return target


_TEMP_NAME = re.compile(r"^\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")
STALE_AFTER_S = 6 * 3600  # a temporary file this old belongs to a write that was killed (no merge runs this long)


def remove_stale_temps(folder: Path) -> None:
    """Remove this tool's temporary files that a killed process left in folder (a WebUI stopped in the
    middle of a merge cannot clean up)."""
    limit = time.time() - STALE_AFTER_S
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < limit:
                os.unlink(entry.path)
        except OSError:
            pass


def _create_temp(folder: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file (mode from the umask, as a normal file gets), open
    for reading too (a writer may read back what it wrote)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = folder / f".{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "could not create a temporary file", str(folder))


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Write a buffer, or a list of buffers one after the other, at the file position (or at offset,
    with positioned writes that leave the position alone)."""
    for part in (data if isinstance(data, (list, tuple)) else [data]):
        view = memoryview(part)
        while view:
            chunk = view[: 1 << 26]
            written = os.write(fd, chunk) if offset is None else os.pwrite(fd, chunk, offset)
            if written <= 0:
                raise OSError(errno.EIO, "write returned no progress")
            view = view[written:]
            offset = None if offset is None else offset + written


def _libc_fallocate():
    """The C library's fallocate, where there is one (Linux); None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None
    found = getattr(libc, "fallocate64", None)
    if found is None and ctypes.sizeof(ctypes.c_long) == 8:  # musl names it fallocate only; off_t is 64-bit here
        found = getattr(libc, "fallocate", None)
    if found is not None:
        found.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        found.restype = ctypes.c_int
    return found


_FALLOCATE = _libc_fallocate()


def preallocate(fd: int, size: int) -> None:
    """Reserve size bytes for the file at once: the file system then allocates its blocks in one go
    rather than write by write (writing 300 MB took a fifth less time on ext4), and a disk too full
    for the file fails here, before any work.  Only the system call: where the file system
    cannot do it (or elsewhere than Linux) nothing happens, rather than C library emulation that
    writes a byte per block."""
    if _FALLOCATE is None or size <= 0 or _FALLOCATE(fd, 0, 0, size) == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        raise OSError(code, os.strerror(code))


def _flush_to_disk(fd: int) -> None:
    """fsync, where the file system supports it (some network and FUSE mounts answer EINVAL);
    real failures (full disk, I/O error) still raise."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
            raise


def _sync_folder(folder: Path) -> None:
    """Best effort: make the rename durable (not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_into_place(temp: Path, target: Path, overwrite: bool) -> None:
    """Rename temp to target. Without overwrite, a hard link makes "create only if absent" atomic, so a
    file that appeared since check_target is never replaced; folders without hard links fall back to a
    re-check and os.replace."""
    if not overwrite:
        try:
            os.link(temp, target)
        except FileExistsError:
            raise LoraMergeError(f"{show(target, 400)}: file exists (it appeared while writing; "
                                 "choose another name or allow overwrite)") from None
        except OSError:
            if os.path.lexists(target):
                raise LoraMergeError(f"{show(target, 400)}: file exists "
                                     "(choose another name or allow overwrite)") from None
        else:
            try:
                os.unlink(temp)
            except OSError:
                pass  # the file is in place; a stray temporary name is not worth failing for
            return
    os.replace(temp, target)


def write_bytes_atomic(path: os.PathLike | str, data, *, overwrite: bool = False,
                       protect: Iterable = ()) -> Path:
    """Write data (a buffer or a list of buffers) to path atomically (see write_file_atomic)."""
    parts = data if isinstance(data, (list, tuple)) else [data]

    def fill(fd: int) -> None:
        preallocate(fd, sum(memoryview(part).nbytes for part in parts))
        write_all(fd, parts)

    return write_file_atomic(path, fill, overwrite=overwrite, protect=protect)


def write_file_atomic(path: os.PathLike | str, fill: Callable[[int], None], *, overwrite: bool = False,
                      protect: Iterable = ()) -> Path:
    """Let fill(fd) write a temporary file, then move it to path after check_target; on any OSError,
    nothing changes at path, the temporary file is removed and a LoraMergeError names the path and the reason."""
    target = check_target(path, overwrite=overwrite, protect=protect)
    temp = None
    fd = -1
    try:
        remove_stale_temps(target.parent)
        fd, temp = _create_temp(target.parent)
        fill(fd)
        replacing = os.path.lexists(target)
        if replacing:
            _flush_to_disk(fd)
        made = os.fstat(fd)
        open_fd, fd = fd, -1  # never close twice: the number may belong to another file by then
        os.close(open_fd)
        try:
            _move_into_place(temp, target, overwrite)
        except KeyboardInterrupt as stop:  # a signal right after the rename: say the file is in place
            _note_if_written(stop, target, made)
            raise
        temp = None
    except OSError as e:
        raise LoraMergeError(f"{show(target, 400)}: could not write the file: {show(e.strerror or e, 200)}") from None
    finally:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass
    if replacing:
        try:
            _sync_folder(target.parent)
        except KeyboardInterrupt as stop:
            stop.written = str(target)
            raise
    return target


def _note_if_written(stop: KeyboardInterrupt, target: Path, made: os.stat_result) -> None:
    """Set stop.written to the target's name when the file at target is the one just made."""
    try:
        now = os.stat(target)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
        stop.written = str(target)
