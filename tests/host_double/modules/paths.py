"""``modules.paths``: re-exports the internal paths, as the host does."""
from modules.paths_internal import data_path, extensions_builtin_dir, extensions_dir, models_path, script_path  # noqa: F401
