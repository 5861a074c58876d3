"""Everything the entry script wires into the WebUI.  The merge tab (``webui.tab``) and the X/Y/Z
axes (``webui.xyz_axes``) are imported lazily, so a missing part never stops the extension loading."""
from __future__ import annotations

import importlib


def _optional(name: str):
    """The module `name`, or None when it is not installed (other import errors propagate)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def register_axes() -> None:
    axes = _optional("lora_merge_ext.webui.xyz_axes")
    if axes is not None:
        axes.register_axes()


def _before_ui() -> None:
    from .extra_network import register_extra_network
    register_extra_network()
    register_axes()


def _ui_tabs():
    tab = _optional("lora_merge_ext.webui.tab")
    return tab.on_ui_tabs() if tab is not None else []


def _app_started(demo, app) -> None:
    tab = _optional("lora_merge_ext.webui.tab")
    if tab is not None:
        tab.on_app_started(demo, app)


def _infotext_pasted(infotext, params) -> None:
    from .infotext import on_infotext_pasted
    on_infotext_pasted(infotext, params)


def _unloaded() -> None:
    from .runtime_state import reset
    reset()


def _model_loaded(sd_model) -> None:
    from .runtime_state import current
    current().forget_model()


def register_callbacks() -> None:
    """Register the callbacks and say in the console when the built-in Lora extension is off."""
    from modules import script_callbacks

    from .host_lora import startup_notice
    script_callbacks.on_before_ui(_before_ui)
    script_callbacks.on_infotext_pasted(_infotext_pasted)
    script_callbacks.on_ui_tabs(_ui_tabs)
    script_callbacks.on_app_started(_app_started)
    script_callbacks.on_script_unloaded(_unloaded)
    script_callbacks.on_model_loaded(_model_loaded)
    notice = startup_notice()
    if notice:
        print(notice, flush=True)


def script_class():
    from .script_hook import make_script_class
    return make_script_class()
