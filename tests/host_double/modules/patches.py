"""``modules.patches`` of the double: swap an attribute of an object (a torch class, say) and keep
the original, per owner key, so the owner can put it back.

``patch(key, obj, field, replacement)`` returns the original and refuses to patch the same field of
the same object twice for one key; ``undo(key, obj, field)`` restores it; ``original(key, obj,
field)`` returns the kept original or None.
"""
_saved: dict = {}   # (key, obj, field) -> the attribute before patching


def patch(key, obj, field, replacement):
    slot = (key, obj, field)
    if slot in _saved:
        raise RuntimeError(f"{key} already patched {field} of {obj!r}")
    before = getattr(obj, field)
    _saved[slot] = before
    setattr(obj, field, replacement)
    return before


def undo(key, obj, field):
    slot = (key, obj, field)
    if slot not in _saved:
        raise RuntimeError(f"{key} has no patch of {field} of {obj!r} to undo")
    setattr(obj, field, _saved.pop(slot))
    return None


def original(key, obj, field):
    return _saved.get((key, obj, field))
