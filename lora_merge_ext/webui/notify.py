"""Problems with a tag, told where the user looks: the console, the generation's comments (shown
under the image in the UI) and, inside a UI request, a gradio warning toast.  Each message is told
once per generation."""
from __future__ import annotations

import sys

PREFIX = "[LJL]"


def warn(p, message: str) -> None:
    told = getattr(p, "ljl_reported", None)
    if told is None:
        told = set()
        try:
            p.ljl_reported = told
        except AttributeError:
            pass
    if message in told:
        return
    told.add(message)
    print(f"{PREFIX} {message}", flush=True)
    if hasattr(p, "comment"):
        p.comment(f"LJL: {message}")
    gradio = sys.modules.get("gradio")
    if gradio is not None and hasattr(gradio, "Warning"):
        try:
            gradio.Warning(f"LJL: {message}")
        except Exception:
            pass
