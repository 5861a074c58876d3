"""WebUI glue for the "LoRA Merge" tab and the /ljl/v1 routes.

`on_ui_tabs()` and `on_app_started(demo, app)` are what the entry script registers.  Both share one
MergeService over the host's Lora folders (`--lora-dir`, then `--lyco-dir-backcompat`).  Merges run
under the host's queue lock (so never beside a generation), and after each write the host's Lora
list is rescanned so the new file can be used, and shows on the Lora cards, without a restart.
WebUI modules are imported inside functions only.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

TAB_TITLE = "LoRA Merge"
TAB_ID = "ljl_merge"
_SERVICE = None
_SERVICE_LOCK = threading.Lock()


def lora_folders() -> list[str]:
    """The host's Lora folders: --lora-dir (where merges are written), then --lyco-dir-backcompat."""
    from modules import shared
    cmd = shared.cmd_opts
    main = getattr(cmd, "lora_dir", None)
    if not main:
        from modules import paths
        main = os.path.join(paths.models_path, "Lora")
    folders = [main]
    extra = getattr(cmd, "lyco_dir_backcompat", None)
    if extra and os.path.isdir(extra):
        folders.append(extra)
    os.makedirs(main, exist_ok=True)
    return folders


def host_serialize(fn):
    """`fn` wrapped to run under the host's queue lock (the lock generation and the API take)."""
    try:
        from modules.call_queue import wrap_queued_call
    except ImportError:
        return fn
    return wrap_queued_call(fn)


def api_credentials() -> dict[str, str] | None:
    """user → password from --api-auth, or None when the WebUI runs without it."""
    from modules import shared
    from ..http_api import parse_api_auth
    return parse_api_auth(getattr(shared.cmd_opts, "api_auth", None))


def after_write(path: Path) -> None:
    """Tell the host about a written file: rescan its Lora list and drop what it cached under that name."""
    networks = sys.modules.get("networks")
    if networks is None:
        print(f"[LJL] wrote {path}; the Lora list was not refreshed (built-in Lora extension not loaded)")
        return
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        networks.list_available_networks()
        _forget_cached(networks, name)
    except Exception as exc:  # the file is written; a failed rescan must not turn the merge into an error
        print(f"[LJL] wrote {path}; refreshing the Lora list failed: {exc}")


def _forget_cached(networks, name: str) -> None:
    """After an overwrite the host would keep applying the old weights (reference §12.8): forget them."""
    in_memory = getattr(networks, "networks_in_memory", None)
    if isinstance(in_memory, dict):
        in_memory.pop(name, None)
    clear = getattr(getattr(networks, "load_lora_state_dict", None), "cache_clear", None)
    if clear is not None:  # Forge: state dicts cached by file name
        clear()
    _forget_conds()
    from modules import shared
    model = getattr(shared, "sd_model", None)
    if model is None:
        return
    if hasattr(model, "current_lora_hash"):  # Forge: rebuild the patched model on the next generation
        model.current_lora_hash = None
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return
    for layer in modules():  # A1111: layers re-merge only when the loaded (name, te, unet, dyn) change
        current = getattr(layer, "network_current_names", ())
        if current and getattr(layer, "network_weights_backup", None) is not None \
                and any(entry and entry[0] == name for entry in current):
            layer.network_current_names = (("ljl: replaced on disk",),)


def _forget_conds() -> None:
    """The host reuses text-encoder conds while the prompt text is unchanged (reference §3.3): after
    an overwrite the same `<lora:NAME>` would keep the old file's text-encoder effect."""
    from modules import processing
    from .activation import forget_conds
    for cls in (getattr(processing, "StableDiffusionProcessing", None),
                getattr(processing, "StableDiffusionProcessingTxt2Img", None)):
        if cls is not None:
            forget_conds(cls)  # the caches are lists shared through the class


def merge_service():
    """The one MergeService of this WebUI process (created on first use)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            from ..ui.handlers import MergeService
            from ..ui.library import LoraLibrary
            _SERVICE = MergeService(LoraLibrary.of(*lora_folders()), serialize=host_serialize,
                                    on_written=after_write)
        return _SERVICE


def on_ui_tabs() -> list:
    """script_callbacks.on_ui_tabs: [(blocks, title, elem_id)]."""
    from ..ui.tab import build_tab
    blocks = build_tab(merge_service(), webui=True, title=TAB_TITLE)
    return [(blocks, TAB_TITLE, TAB_ID)]


def on_app_started(demo, app) -> None:
    """script_callbacks.on_app_started: the /ljl/v1 routes, behind --api-auth when it is set, and only
    when the WebUI serves its own API (--api or --nowebui): app_started runs either way, and routes
    added here are not behind the UI's login (reference §10), so without --api they would let anyone
    who reaches the server write into the Lora folder."""
    from modules import shared
    if not (getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False)):
        print("[LJL] the /ljl/v1 HTTP routes are off: start the WebUI with --api to serve them")
        return
    from ..http_api import register
    register(app, merge_service(), credentials=api_credentials())
