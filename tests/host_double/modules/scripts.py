"""``modules.scripts`` of the double: the ``Script`` base class, loading ``scripts/*.py`` files, and the
per-tab ``ScriptRunner`` that calls the scripts' hooks (reference §4.2-4.4).

Loading order: the WebUI root's ``scripts/`` folder, then the extra root scripts the harness names
(the X/Y/Z plot double), then each active extension's ``scripts/`` folder, built-in extensions first,
files alphabetical within a folder (metadata.ini ordering is not modelled).  While an extension's
file executes, the extension folder is first on ``sys.path`` and ``basedir()`` names it; both are
put back afterwards.  Every class found in the executed module that subclasses ``Script`` is
recorded in ``scripts_data``.

A runner makes one instance of every recorded class for its tab.  ``show()`` returning
``AlwaysVisible`` makes it an always-on script (the only kind whose ``process``-family hooks run);
a true value makes it selectable in the Script dropdown (``run``).  ``setup_ui`` lays out the
scripts' ``ui()`` controls after one slot for the dropdown, giving each script its
``args_from:args_to`` slice of ``p.script_args``.
"""
import os
import re
import sys
from collections import namedtuple

from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data = []
scripts_txt2img = None
scripts_img2img = None
_running_from = paths.script_path


def basedir():
    """The folder of the extension whose script file is executing (the WebUI root otherwise)."""
    return _running_from


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return None

    def run(self, p, *args):
        return None

    # hooks of always-on scripts, in the order processing calls them
    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        """Runs before the batch's prompts are parsed for extra networks (so it may add tags).
        kwargs: batch_number, prompts, seeds, subseeds."""

    def after_extra_networks_activate(self, p, *args, **kwargs):
        """Runs after every extra network was activated for a pass, before the conds are computed;
        not when p.disable_extra_networks.  kwargs: batch_number, prompts, seeds, subseeds,
        extra_network_data."""

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        """``script_[<tab>_]<title, lower-cased, spaces as _, other characters dropped>_<item_id>``;
        the tab part only for a script shown on both tabs."""
        slug = re.sub(r"[^a-z0-9_]", "", "_".join(self.title().lower().split(" ")))
        both = bool(self.show(True)) == bool(self.show(False))
        tab = ("img2img_" if self.is_img2img else "txt2img_") if both else ""
        return f"script_{tab}{slug}_{item_id}"


def _py_files(folder):
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(".py") and os.path.isfile(os.path.join(folder, f))]


def list_scripts(scriptdirname="scripts", extension=".py", root_scripts=()):
    """[(basedir, path)] of the script files to execute, in loading order."""
    root = paths.script_path
    found = [(root, path) for path in _py_files(os.path.join(root, scriptdirname))]
    found += [(root, path) for path in root_scripts]
    enabled = extensions.active()
    for ext in sorted(enabled, key=lambda e: not e.is_builtin):  # stable: built-in ones first
        found += [(ext.path, path) for path in _py_files(os.path.join(ext.path, scriptdirname))]
    return [(base, path) for base, path in found if path.lower().endswith(extension)]


def _execute(base, path):
    global _running_from
    saved_path = list(sys.path)
    if base != paths.script_path:
        sys.path.insert(0, base)
    _running_from = base
    try:
        return script_loading.load_module(path)
    finally:
        sys.path[:] = saved_path
        _running_from = paths.script_path


def load_scripts(root_scripts=()):
    """Forget the recorded scripts and every callback, then execute all script files again."""
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for base, path in list_scripts("scripts", ".py", root_scripts):
        try:
            module = _execute(base, path)
        except Exception:
            errors.report(f"Error loading script: {os.path.basename(path)}", exc_info=True)
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, Script):
                scripts_data.append(ScriptClassData(value, path, base, module))


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.alwayson_scripts = []
        self.selectable_scripts = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts, self.alwayson_scripts, self.selectable_scripts = [], [], []
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            script.is_img2img = bool(is_img2img)
            script.is_txt2img = not is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            shown = script.show(script.is_img2img)
            if shown is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif shown:
                self.selectable_scripts.append(script)
            else:
                continue
            self.scripts.append(script)

    def setup_ui(self):
        self.inputs = [None]  # slot 0: the Script dropdown (index of the selected script, 0 = none)
        for script in self.alwayson_scripts + self.selectable_scripts:
            script.args_from = len(self.inputs)
            self.inputs += list(script.ui(script.is_img2img) or [])
            script.args_to = len(self.inputs)
        return self.inputs

    def default_args(self):
        """The values the controls start with, as the API uses for scripts a request does not name."""
        return [0] + [getattr(control, "value", control) for control in self.inputs[1:]]

    def run(self, p, *args):
        chosen = args[0] if args else 0
        if not chosen:
            return None
        script = self.selectable_scripts[chosen - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def _each_alwayson(self, hook, p, *lead, **kwargs):
        for script in self.alwayson_scripts:
            own_args = p.script_args[script.args_from:script.args_to]
            try:
                getattr(script, hook)(p, *lead, *own_args, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._each_alwayson("before_process", p)

    def process(self, p):
        self._each_alwayson("process", p)

    def before_process_batch(self, p, **kwargs):
        self._each_alwayson("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._each_alwayson("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each_alwayson("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._each_alwayson("postprocess_batch", p, images=images, **kwargs)

    def before_hr(self, p):
        self._each_alwayson("before_hr", p)

    def postprocess(self, p, processed):
        self._each_alwayson("postprocess", p, processed)


def create_script_runners():
    """A runner for each tab (the harness then calls their ``setup_ui``)."""
    global scripts_txt2img, scripts_img2img
    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()
    scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts_img2img.initialize_scripts(is_img2img=True)
    return scripts_txt2img, scripts_img2img
