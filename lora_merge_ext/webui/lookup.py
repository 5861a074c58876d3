"""LoRA names resolved the way ``<lora:NAME:…>`` resolves them: alias or file name, through the Lora
extension's own tables (rescanning the folders for a name not seen yet)."""
from __future__ import annotations

from ..errors import LoraMergeError
from ..sigma import show
from .host_lora import LoraUnavailable, lora_modules


def _lookup(networks, name: str):
    if name.lower() in networks.forbidden_network_aliases:
        return networks.available_networks.get(name)
    return networks.available_network_aliases.get(name)


def find_on_disk(networks, name: str):
    """The host's NetworkOnDisk for a tag name, else LoraMergeError."""
    entry = _lookup(networks, name)
    if entry is None and hasattr(networks, "update_available_networks_by_names"):
        networks.update_available_networks_by_names([name])
        entry = _lookup(networks, name)
    if entry is None:
        networks.list_available_networks()
        entry = _lookup(networks, name)
    if entry is None:
        hint = " (that alias is shared by several files; use the file name)" \
            if name.lower() in networks.forbidden_network_aliases else ""
        raise LoraMergeError(f"no LoRA named '{show(name)}' in the Lora folders{hint}")
    return entry


def lora_path(name: str) -> str:
    """Path of the LoRA file a tag names, else LoraMergeError (also when the Lora extension is off)."""
    try:
        host = lora_modules()
    except LoraUnavailable as exc:
        raise LoraMergeError(str(exc)) from None
    return find_on_disk(host.networks, name).filename
