"""``modules.hashes`` of the double: file sha256 values, remembered per title while the file is unchanged.

With ``use_addnet_hash`` the hash covers only what follows a safetensors header (the tensor bytes),
which is the hash "Lora hashes" shows for a file without ``sshs_model_hash``.  Every hash really
computed is listed in ``computed`` as ``(title, use_addnet_hash)`` so tests can count them.
"""
import hashlib
import os

from modules import cache

computed = []
_BLOCK = 1 << 20


def _section(use_addnet_hash: bool) -> dict:
    return cache.cache("hashes-addnet" if use_addnet_hash else "hashes")


def _digest_from(handle, start: int) -> str:
    digest = hashlib.sha256()
    handle.seek(start)
    while True:
        block = handle.read(_BLOCK)
        if not block:
            return digest.hexdigest()
        digest.update(block)


def calculate_sha256(filename) -> str:
    with open(filename, "rb") as handle:
        return _digest_from(handle, 0)


def addnet_hash_safetensors(handle) -> str:
    """sha256 of a safetensors stream without its 8-byte length and JSON header."""
    handle.seek(0)
    header_size = int.from_bytes(handle.read(8), "little")
    return _digest_from(handle, 8 + header_size)


def sha256_from_cache(filename, title, use_addnet_hash=False):
    """The remembered hash, or None when there is none or the file changed since."""
    known = _section(use_addnet_hash).get(title)
    if not known or os.path.getmtime(filename) > known["mtime"]:
        return None
    return known["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    known = sha256_from_cache(filename, title, use_addnet_hash)
    if known is not None:
        return known
    if use_addnet_hash:
        with open(filename, "rb") as handle:
            value = addnet_hash_safetensors(handle)
    else:
        value = calculate_sha256(filename)
    computed.append((title, use_addnet_hash))
    _section(use_addnet_hash)[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    return value
