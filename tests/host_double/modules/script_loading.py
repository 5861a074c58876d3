"""``modules.script_loading``: a script file becomes a module named after its file name
(e.g. ``"ljl_merge.py"``) that is not put in ``sys.modules`` (reference §4.3)."""
import importlib.util
import os


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
