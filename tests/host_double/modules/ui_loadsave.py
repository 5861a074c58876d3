"""``modules.ui_loadsave`` of the double: how the WebUI restores the defaults saved in ui-config.json
into a tab's components after the tab is built (v1.10.1, modules/ui_loadsave.py, add_block and
add_component; modules/ui.py adds each extension tab with its elem_id as the path).

A component is keyed ``<tab>/<label>/<field>`` (a button without a label by its text); components
with ``do_not_save_to_config`` are left alone.  A key never saved records the component's current
value; a saved one is set on the component (a radio's only when it is one of its choices).
"""
from __future__ import annotations

import gradio as gr

_VALUED = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)


class UiLoadsave:
    def __init__(self, ui_settings: dict | None = None):
        self.ui_settings = dict(ui_settings or {})

    def add_block(self, x, path: str = "") -> None:
        if hasattr(x, "children"):
            for child in x.children:
                self.add_block(child, path)
        elif getattr(x, "label", None) is not None:
            self.add_component(f"{path}/{x.label}", x)
        elif isinstance(x, gr.Button) and x.value is not None:
            self.add_component(f"{path}/{x.value}", x)

    def add_component(self, path: str, x) -> None:
        if type(x) in (*_VALUED, gr.Button) and x.visible:
            self._apply(path, x, "visible")
        if type(x) in _VALUED:
            self._apply(path, x, "value")

    def _apply(self, path: str, obj, field: str) -> None:
        if getattr(obj, "do_not_save_to_config", False):
            return
        key = f"{path}/{field}"
        saved = self.ui_settings.get(key)
        if saved is None:
            self.ui_settings[key] = getattr(obj, field)
        elif isinstance(obj, gr.Radio) and field == "value" and saved not in _choices(obj):
            return
        else:
            setattr(obj, field, float(saved) if isinstance(obj, gr.Number) and field == "value" else saved)


def _choices(radio) -> list:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in radio.choices]
