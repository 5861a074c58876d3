"""``modules.script_loading`` of the double: a script file is executed as a module whose name is the
file's base name (``"ljl_merge.py"``) and which is not entered in ``sys.modules`` (reference §4.3)."""
import importlib.util
import os


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded
