"""``modules.hashes``: sha256 of model files, cached by title and mtime; the "addnet" hash of a
safetensors file is the sha256 of the bytes after its header."""
import hashlib
import os

from modules import cache

computed = []  # (title, use_addnet_hash) for every hash actually computed (tests look at it)


def calculate_sha256(filename):
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def addnet_hash_safetensors(b):
    h = hashlib.sha256()
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    for chunk in iter(lambda: b.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    hashes = cache.cache("hashes-addnet" if use_addnet_hash else "hashes")
    entry = hashes.get(title)
    if entry is None:
        return None
    if os.path.getmtime(filename) > entry["mtime"]:
        return None
    return entry["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    hashes = cache.cache("hashes-addnet" if use_addnet_hash else "hashes")
    value = sha256_from_cache(filename, title, use_addnet_hash)
    if value is not None:
        return value
    if use_addnet_hash:
        with open(filename, "rb") as f:
            value = addnet_hash_safetensors(f)
    else:
        value = calculate_sha256(filename)
    computed.append((title, use_addnet_hash))
    hashes[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    return value
