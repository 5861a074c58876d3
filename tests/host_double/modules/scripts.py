"""``modules.scripts``: the Script base class, script-file loading and the ScriptRunner hooks
(reference §4.2-4.4).

Loading: root scripts first, then each active extension's ``scripts/*.py`` (built-in extensions
first, alphabetical within each).  While a file runs, its extension folder is prepended to
``sys.path`` and ``basedir()`` returns it; afterwards ``sys.path`` is restored.  Every class in the
module's namespace that subclasses ``Script`` is registered.  ``metadata.ini`` ordering is not
modelled (built-in extensions already load first).
"""
import os
import sys
from collections import namedtuple

from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data = []
current_basedir = paths.script_path


def basedir():
    return current_basedir


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
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        """Called before extra networks are parsed from the prompt, so it may add tags."""
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        """Called after extra networks activation, before conds calculation; not called when
        p.disable_extra_networks is set.  kwargs: batch_number, prompts, seeds, subseeds,
        extra_network_data."""
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def elem_id(self, item_id):
        import re
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


def list_scripts(scriptdirname, extension, root_scripts=()):
    scripts_list = []
    root_dir = os.path.join(paths.script_path, scriptdirname)
    if os.path.isdir(root_dir):
        for filename in sorted(os.listdir(root_dir)):
            scripts_list.append(ScriptFile(paths.script_path, filename, os.path.join(root_dir, filename)))
    for path in root_scripts:
        scripts_list.append(ScriptFile(paths.script_path, os.path.basename(path), path))
    active = extensions.active()
    for ext in [e for e in active if e.is_builtin] + [e for e in active if not e.is_builtin]:
        dirpath = os.path.join(ext.path, scriptdirname)
        if os.path.isdir(dirpath):
            for filename in sorted(os.listdir(dirpath)):
                scripts_list.append(ScriptFile(ext.path, filename, os.path.join(dirpath, filename)))
    return [x for x in scripts_list if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


def load_scripts(root_scripts=()):
    """Clear callbacks and registered scripts, then execute every script file (see module doc)."""
    global current_basedir
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in list_scripts("scripts", ".py", root_scripts):
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for script_class in module.__dict__.values():
                if type(script_class) == type and issubclass(script_class, Script):
                    scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def setup_ui(self):
        """Run every script's ui(); inputs = [selected script index, alwayson args…, selectable args…]."""
        self.inputs = [None]
        self.titles = [s.title() for s in self.selectable_scripts]
        for script in self.alwayson_scripts + self.selectable_scripts:
            controls = script.ui(script.is_img2img) or []
            script.args_from = len(self.inputs)
            self.inputs.extend(controls)
            script.args_to = len(self.inputs)
        return self.inputs

    def default_args(self):
        return [0] + [getattr(c, "value", c) for c in self.inputs[1:]]

    def _hook(self, name, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, name)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {name}: {script.filename}", exc_info=True)

    def run(self, p, *args):
        script_index = args[0] if args else 0
        if not script_index:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def before_process(self, p):
        self._hook("before_process", p)

    def process(self, p):
        self._hook("process", p)

    def before_process_batch(self, p, **kwargs):
        self._hook("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._hook("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._hook("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._hook("postprocess_batch", p, images=images, **kwargs)

    def before_hr(self, p):
        self._hook("before_hr", p)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            try:
                script.postprocess(p, processed, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running postprocess: {script.filename}", exc_info=True)


scripts_txt2img = None
scripts_img2img = None


def create_script_runners():
    global scripts_txt2img, scripts_img2img
    scripts_txt2img = ScriptRunner()
    scripts_txt2img.initialize_scripts(False)
    scripts_img2img = ScriptRunner()
    scripts_img2img.initialize_scripts(True)
    return scripts_txt2img, scripts_img2img
