"""``modules.extensions`` of the double: the installed extensions (filled by the harness) and which of
them are active.  An extension's canonical name is its folder name, lower-cased (reference §6.3)."""
from modules import shared

extensions = []


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False):
        self.name = name
        self.canonical_name = name.strip().lower()
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin


def active():
    """Enabled extensions, less all of them or the non-built-in ones per "Disable all extensions"."""
    mode = shared.opts.disable_all_extensions
    if mode == "all":
        return []
    return [e for e in extensions if e.enabled and (mode != "extra" or e.is_builtin)]
