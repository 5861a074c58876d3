"""``modules.cache``: data computed from a file, kept while the file's mtime is unchanged."""
import os

_caches = {}


def cache(subsection):
    return _caches.setdefault(subsection, {})


def cached_data_for_file(subsection, title, filename, func):
    existing = cache(subsection)
    mtime = os.path.getmtime(filename)
    entry = existing.get(title)
    if entry is not None and entry["mtime"] >= mtime:
        return entry["value"]
    value = func()
    if value is None:
        return None
    existing[title] = {"mtime": mtime, "value": value}
    return value


def clear():
    _caches.clear()
