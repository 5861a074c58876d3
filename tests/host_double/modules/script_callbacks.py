"""``modules.script_callbacks``: registrars ``on_*(callback, *, name=None)`` and the callers the host
runs.  Callbacks run in registration order, except ``before_ui`` and ``script_unloaded``, which run
in reverse; an exception in one callback is reported and the others still run (reference §4.1)."""
import inspect
import os
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])

CATEGORIES = ("callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_tabs", "callbacks_ui_settings",
              "callbacks_before_ui", "callbacks_infotext_pasted", "callbacks_script_unloaded",
              "callbacks_before_reload")
callback_map = {c: [] for c in CATEGORIES}


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def _caller_script():
    for frame in inspect.stack()[2:]:
        if os.path.basename(frame.filename) != "script_callbacks.py":
            return frame.filename
    return "unknown"


def add_callback(callbacks, fun, *, name=None, category="unknown"):
    script = _caller_script()
    unique = f"{os.path.basename(os.path.dirname(os.path.dirname(script)))}/{os.path.basename(script)}/{category}"
    if name is not None:
        unique += f"/{name}"
    existing = {c.name for c in callbacks}
    base, n = unique, 1
    while unique in existing:
        unique = f"{base}-{n}"
        n += 1
    callbacks.append(ScriptCallback(script, fun, unique))


def _run(category, *args, reverse=False):
    results = []
    items = list(callback_map[category])
    for c in (reversed(items) if reverse else items):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {c.name} for {category}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("callbacks_app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("callbacks_model_loaded", sd_model)


def ui_tabs_callback():
    res = []
    for r in _run("callbacks_ui_tabs"):
        res += r or []
    return res


def ui_settings_callback():
    _run("callbacks_ui_settings")


def before_ui_callback():
    _run("callbacks_before_ui", reverse=True)


def infotext_pasted_callback(infotext, params):
    _run("callbacks_infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("callbacks_script_unloaded", reverse=True)


def before_reload_callback():
    _run("callbacks_before_reload")


def on_app_started(callback, *, name=None):
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_before_reload"], callback, name=name, category="before_reload")
