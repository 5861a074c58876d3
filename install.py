"""Run by the WebUI at start-up (as `python install.py`, with the WebUI root on PYTHONPATH).

The extension needs only what the WebUI already ships (torch, safetensors, numpy, gradio), so this
installs nothing and touches no network; it only says so if one of them is missing.
"""
import importlib.util

NEEDED = ("torch", "safetensors", "numpy")

missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
if missing:
    print(f"[LJL] LoRA merge & join: {', '.join(missing)} not found; the WebUI normally provides them. "
          "Nothing was installed.")
