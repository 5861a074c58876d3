"""WebUI entry point of the LoRA merge & join extension: wiring only (code in lora_merge_ext.webui)."""
from lora_merge_ext import api  # noqa: F401  the core first: should it fail to load, nothing is registered
from lora_merge_ext.webui import register

register.register_callbacks()
register.register_axes()  # at import too, so API-only mode (--nowebui) has the X/Y/Z axes
LjlScript = register.script_class()
