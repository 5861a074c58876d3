"""``modules.script_callbacks`` of the double: the ``on_<event>(callback, *, name=None)`` registrars and
the ``<event>_callback(...)`` functions the host calls (reference §4.1).

Callbacks of an event run in registration order, except ``before_ui`` and ``script_unloaded``, whose
callbacks run last-registered first.  A callback that raises is reported on the console and the
others still run.  Each registration gets a name ``<extension folder>/<script file>/<event>[/<name>]``
(made unique with ``-1``, ``-2``, …); ordering by metadata.ini or settings is not modelled.
"""
import os
import sys
from dataclasses import dataclass

from modules import errors


@dataclass(frozen=True)
class Registration:
    callback: object
    name: str
    origin: str  # the file that registered it


EVENTS = ("app_started", "model_loaded", "ui_tabs", "ui_settings", "before_ui", "infotext_pasted",
          "script_unloaded", "before_reload")
_REVERSED = {"before_ui", "script_unloaded"}
_registered: dict = {event: [] for event in EVENTS}


def clear_callbacks() -> None:
    for event in EVENTS:
        _registered[event] = []


def _registering_file() -> str:
    frame = sys._getframe(1)
    here = os.path.abspath(__file__)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == here:
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else "<unknown>"


def _register(event: str, callback, name) -> None:
    origin = _registering_file()
    folder = os.path.basename(os.path.dirname(os.path.dirname(origin)))
    label = "/".join(part for part in (folder, os.path.basename(origin), event, name) if part)
    taken = {r.name for r in _registered[event]}
    unique, n = label, 0
    while unique in taken:
        n += 1
        unique = f"{label}-{n}"
    _registered[event].append(Registration(callback, unique, origin))


def _fire(event: str, *args) -> list:
    listeners = list(_registered[event])
    if event in _REVERSED:
        listeners.reverse()
    results = []
    for reg in listeners:
        try:
            results.append(reg.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {reg.name} for {event}", exc_info=True)
    return results


def on_app_started(callback, *, name=None):
    _register("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _register("model_loaded", callback, name)


def on_ui_tabs(callback, *, name=None):
    _register("ui_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    _register("ui_settings", callback, name)


def on_before_ui(callback, *, name=None):
    _register("before_ui", callback, name)


def on_infotext_pasted(callback, *, name=None):
    _register("infotext_pasted", callback, name)


def on_script_unloaded(callback, *, name=None):
    _register("script_unloaded", callback, name)


def on_before_reload(callback, *, name=None):
    _register("before_reload", callback, name)


def app_started_callback(demo, app):
    _fire("app_started", demo, app)


def model_loaded_callback(sd_model):
    _fire("model_loaded", sd_model)


def ui_tabs_callback() -> list:
    """Every (component, title, elem_id) the ui_tabs callbacks returned, in order."""
    return [tab for returned in _fire("ui_tabs") for tab in (returned or [])]


def ui_settings_callback():
    _fire("ui_settings")


def before_ui_callback():
    _fire("before_ui")


def infotext_pasted_callback(infotext, params):
    _fire("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _fire("script_unloaded")


def before_reload_callback():
    _fire("before_reload")
