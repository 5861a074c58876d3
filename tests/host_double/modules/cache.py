"""``modules.cache`` of the double: values derived from a file, reused while the file is not newer.

``cache(subsection)`` is a plain dict per subsection (kept in memory only, unlike the host's JSON
file); ``cached_data_for_file(subsection, title, filename, func)`` returns the stored value for
`title` unless the file's mtime is newer than when it was stored, else calls ``func()`` and
stores its result (a ``None`` result is not stored).
"""
import os

_sections: dict = {}


def cache(subsection: str) -> dict:
    if subsection not in _sections:
        _sections[subsection] = {}
    return _sections[subsection]


def cached_data_for_file(subsection, title, filename, func):
    store = cache(subsection)
    stamp = os.path.getmtime(filename)
    known = store.get(title)
    if known and stamp <= known["mtime"]:
        return known["value"]
    fresh = func()
    if fresh is not None:
        store[title] = {"mtime": stamp, "value": fresh}
    return fresh


def clear() -> None:
    _sections.clear()
