"""Built-in Lora double, ``scripts/lora_script.py``: wiring the extension into the host (reference §2.7).

Executing this file patches the torch layer classes (``networks.originals``), registers the
callbacks (layer names on model load, the ``lora`` handler — also answering ``lyco`` — in
``before_ui``, undoing the patches on unload, the infotext paste handlers, the two API routes) and
adds the extension's settings.  The cards page is not modelled.
"""
import re

import extra_networks_lora
import lora_patches
import networks
from modules import extra_networks, script_callbacks, shared
from modules.options import OptionInfo

networks.originals = lora_patches.LoraPatches()


def _register_handler():
    handler = extra_networks_lora.ExtraNetworkLora()
    networks.extra_network_lora = handler
    extra_networks.register_extra_network(handler)
    extra_networks.register_extra_network_alias(handler, "lyco")


def _undo_patches():
    networks.originals.undo()


_EXTRA_NETWORKS = ("extra_networks", "Extra Networks")
_COMPATIBILITY = ("compatibility", "Compatibility")
for key, default, label, section in (
        ("sd_lora", "None", "Add network to prompt", _EXTRA_NETWORKS),
        ("lora_preferred_name", "Alias from file", "When adding to prompt, refer to Lora by", _EXTRA_NETWORKS),
        ("lora_add_hashes_to_infotext", True, "Add Lora hashes to infotext", _EXTRA_NETWORKS),
        ("lora_bundled_ti_to_infotext", True, "Add Lora name as TI hashes for bundled embeddings", _EXTRA_NETWORKS),
        ("lora_show_all", False, "Always show all networks on the Lora page", _EXTRA_NETWORKS),
        ("lora_hide_unknown_for_versions", [], "Hide networks of unknown versions for model versions", _EXTRA_NETWORKS),
        ("lora_in_memory_limit", 0, "Number of Lora networks to keep cached in memory", _EXTRA_NETWORKS),
        ("lora_not_found_warning_console", False, "Lora not found warning in console", _EXTRA_NETWORKS),
        ("lora_not_found_gradio_warning", False, "Lora not found warning popup in webui", _EXTRA_NETWORKS),
        ("lora_functional", False, "Lora/Networks: use the functional way of applying networks", _COMPATIBILITY)):
    shared.opts.add_option(key, OptionInfo(default, label, section=section))


def _lora_routes(demo, app):
    def list_loras():
        return [{"name": e.name, "alias": e.alias, "path": e.filename, "metadata": e.metadata}
                for e in list(networks.available_networks.values())]

    def refresh_loras():
        networks.list_available_networks()

    app.add_api_route("/sdapi/v1/loras", list_loras, methods=["GET"])
    app.add_api_route("/sdapi/v1/refresh-loras", refresh_loras, methods=["POST"])


_LORA_TAG_NAME = re.compile(r"<lora:([^:>]+):")


def _paste_lora_hashes(infotext, params):
    """Point pasted ``<lora:NAME:`` tags at the local file with the "Lora hashes" short hash."""
    by_name = {}
    for item in str(params.get("Lora hashes") or "").split(","):
        name, colon, shorthash = item.partition(":")
        if colon:
            by_name[name.strip()] = shorthash.strip()
    if not by_name or not params.get("Prompt"):
        return

    def local(match):
        entry = networks.available_network_hash_lookup.get(by_name.get(match.group(1), ""))
        return match.group(0) if entry is None else f"<lora:{entry.get_alias()}:"

    params["Prompt"] = _LORA_TAG_NAME.sub(local, params["Prompt"])


script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
script_callbacks.on_script_unloaded(_undo_patches)
script_callbacks.on_before_ui(_register_handler)
script_callbacks.on_infotext_pasted(networks.infotext_pasted)
script_callbacks.on_app_started(_lora_routes)
script_callbacks.on_infotext_pasted(_paste_lora_hashes)

shared.opts.onchange("lora_in_memory_limit", networks.purge_networks_from_memory)
