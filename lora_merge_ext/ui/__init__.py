"""The "LoRA Merge" tab, shared by the WebUI (on_ui_tabs) and the standalone command.

`build_tab` needs gradio; the handlers (`handlers`, `callbacks`, `names`, `tag_builder`,
`report_plot`) do not, so importing this package never imports gradio.
"""
from __future__ import annotations


def build_tab(*args, **kwargs):
    """See lora_merge_ext.ui.tab.build_tab (imported lazily: gradio is only needed for the layout)."""
    from .tab import build_tab as _build
    return _build(*args, **kwargs)
