"""The built-in Lora extension (``extensions-builtin/Lora``), as the modules the host itself uses.

The extension's files are imported by their top-level names (``networks``, ``network``,
``network_lora``): the host imported them that way while running its ``lora_script.py``, and a
package-qualified import would make a second copy with its own ``loaded_networks``.  If they are
not imported yet and the extension is enabled, its folder is put on ``sys.path`` for the import only
(the modules are then unpatched — the extension's ``lora_script.py`` never ran — and tags are
refused with that reason rather than appended to a list no layer reads).
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

BUILTIN_NAME = "lora"


class LoraUnavailable(Exception):
    """The built-in Lora machinery cannot be used; the message says why, in one line."""


def _extension_entry():
    try:
        from modules import extensions
    except ImportError:
        return None, []
    entries = [e for e in getattr(extensions, "extensions", [])
               if str(getattr(e, "canonical_name", e.name)).lower() == BUILTIN_NAME and getattr(e, "is_builtin", True)]
    try:
        active = extensions.active()
    except Exception:
        active = [e for e in entries if getattr(e, "enabled", True)]
    return (entries[0] if entries else None), active


def unavailable_reason() -> str | None:
    """Why the built-in Lora extension cannot be used, or None when it can."""
    entry, active = _extension_entry()
    if entry is not None and entry not in active:
        return ("the built-in Lora extension is disabled (enable 'Lora' in Extensions > Installed, "
                "and check 'Disable all extensions' in Settings)")
    if entry is None and "networks" not in sys.modules:
        try:
            from modules import paths_internal
            folder = os.path.join(paths_internal.extensions_builtin_dir, "Lora")
        except ImportError:
            folder = None
        if not folder or not os.path.isdir(folder):
            return "the built-in Lora extension (extensions-builtin/Lora) is not installed"
    return None


def _import_from_builtin_folder():
    from modules import paths_internal
    folder = os.path.join(paths_internal.extensions_builtin_dir, "Lora")
    sys.path.insert(0, folder)
    try:
        import network  # noqa: F401
        import network_lora  # noqa: F401
        import networks  # noqa: F401
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


OTHER_WAY = ("this WebUI's Lora extension applies LoRA another way (Forge?); "
             "<ljl> tags need the AUTOMATIC1111 1.9/1.10 Lora extension")


def _not_patching(networks) -> str | None:
    """Why this ``networks`` would not merge ``loaded_networks`` into the model's layers, else None.

    Current Forge has no ``network_apply_weights``; old Forge and reForge keep A1111's names as
    no-op stubs and an empty ``LoraPatches`` class; on A1111 ``networks.originals`` holds the saved
    torch forwards, set when the extension's ``lora_script.py`` patches the layer classes
    (A1111_HOST_API.md §2.5, §9.1-9.3).
    """
    if not (hasattr(networks, "loaded_networks") and callable(getattr(networks, "network_apply_weights", None))):
        return OTHER_WAY
    originals = getattr(networks, "originals", None)
    if originals is None:
        return ("the built-in Lora extension has not started (its scripts/lora_script.py did not run), "
                "so no model layer would take the weights")
    if not callable(getattr(originals, "Linear_forward", None)):
        return OTHER_WAY
    return None


def lora_modules() -> SimpleNamespace:
    """SimpleNamespace(networks, network, network_lora), or LoraUnavailable saying why not."""
    reason = unavailable_reason()
    if reason:
        raise LoraUnavailable(reason)
    if "networks" in sys.modules:  # the host's own: judge it before importing anything beside it
        reason = _not_patching(sys.modules["networks"])
        if reason:
            raise LoraUnavailable(reason)
    if not all(name in sys.modules for name in ("networks", "network", "network_lora")):
        try:
            _import_from_builtin_folder()
        except ImportError as exc:
            raise LoraUnavailable(f"the built-in Lora extension could not be imported ({exc})") from None
    networks, network, network_lora = (sys.modules[n] for n in ("networks", "network", "network_lora"))
    reason = _not_patching(networks)
    if not reason and not (hasattr(network, "Network") and hasattr(network_lora, "NetworkModuleLora")):
        reason = OTHER_WAY
    if reason:
        raise LoraUnavailable(reason)
    return SimpleNamespace(networks=networks, network=network, network_lora=network_lora)


def startup_notice() -> str | None:
    """The console line to print at start-up when <ljl> tags cannot work, else None."""
    reason = unavailable_reason()
    if reason:
        return f"[LJL] <ljl:…> prompt tags are disabled: {reason}. The merge tab still works."
    return None
