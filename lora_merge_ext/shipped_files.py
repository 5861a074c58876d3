"""Files that ship beside the code: preset.txt, style.css and the example LoRAs.

They live at the project root, where the WebUI and users find (and edit) them.  A wheel built from
the project (``pip install .``) carries copies in ``lora_merge_ext/shipped/``, used when the package
does not sit in a checkout of the project.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGED = Path(__file__).resolve().parent / "shipped"


def in_checkout() -> bool:
    """Whether the package sits in the project folder (a clone, or the WebUI's extensions folder)."""
    return (PROJECT_ROOT / "scripts" / "ljl_merge.py").is_file()


def shipped_path(name: str) -> Path:
    """Where the shipped file or folder `name` (preset.txt, style.css, examples) is."""
    return (PROJECT_ROOT if in_checkout() else PACKAGED) / name
