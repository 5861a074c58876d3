"""``modules.extensions``: installed extensions; a disabled one is not in ``active()`` (reference §6.3)."""
from modules import shared

extensions = []


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False):
        self.name = name
        self.canonical_name = name.lower().strip()
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin


def active():
    if shared.opts.disable_all_extensions == "all":
        return []
    if shared.opts.disable_all_extensions == "extra":
        return [x for x in extensions if x.enabled and x.is_builtin]
    return [x for x in extensions if x.enabled]
