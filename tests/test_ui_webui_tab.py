"""The merge tab's WebUI glue (lora_merge_ext/webui/tab.py) in the test double of the WebUI:
the tab comes from the on_ui_tabs callback, merges run under the host's queue lock, written files
reach the host's Lora list (and an overwritten file is re-applied), routes honour --api-auth."""
import base64
import sys
import threading
import types

import gradio as gr
import pytest
import torch

from host_double.fixtures import host_factory, write_lora  # noqa: F401  (fixture)
from lora_merge_ext.ui.handlers import MergeRequest


def install_call_queue():
    """modules.call_queue as the host has it: one FIFO queue lock and wrap_queued_call (reference §8)."""
    module = types.ModuleType("modules.call_queue")
    module.queue_lock = threading.Lock()

    def wrap_queued_call(func):
        def f(*args, **kwargs):
            with module.queue_lock:
                return func(*args, **kwargs)
        return f

    module.wrap_queued_call = wrap_queued_call
    sys.modules["modules.call_queue"] = module
    sys.modules["modules"].call_queue = module
    return module


@pytest.fixture
def host(host_factory, tmp_path):  # noqa: F811
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    write_lora(lora_dir, "a", rank=2, seed=1)
    write_lora(lora_dir, "b", rank=2, seed=2)
    h = host_factory("sd1", lora_dir=lora_dir)
    h.call_queue = install_call_queue()
    return h


def test_the_tab_comes_from_the_ui_tabs_callback(host):
    from modules import script_callbacks
    tabs = [t for t in script_callbacks.ui_tabs_callback() if t[2] == "ljl_merge"]
    assert len(tabs) == 1
    blocks, title, elem_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and title == "LoRA Merge"
    js = " ".join(str(d.get("js") or d.get("_js") or "") for d in blocks.config["dependencies"])
    assert "ljlMergeSendTag('txt2img'" in js and "ljlMergeSendTag('img2img'" in js and "ljlMergeRefreshCards" in js
    from lora_merge_ext.webui.tab import merge_service
    assert merge_service().library.output_dir == host.lora_dir.resolve()


def test_merges_run_under_the_queue_lock_and_refresh_the_host_list(host):
    from lora_merge_ext.webui.tab import merge_service
    networks = host.networks
    original = networks.list_available_networks
    lock_held = []

    def watched():
        lock_held.append(host.call_queue.queue_lock.locked())
        original()

    networks.list_available_networks = watched
    try:
        out = merge_service().merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="ab"))
    finally:
        networks.list_available_networks = original
    assert lock_held == [True]
    assert "ab" in networks.available_networks
    assert networks.available_networks["ab"].filename == str(out.path)


@pytest.mark.parametrize("tag", ["<lora:m:1>", "<ljl:m:1,1>"])
def test_an_overwritten_file_is_applied_anew_at_the_next_generation(host, tag):
    """Layers and the text-encoder conds: the host caches conds by prompt text (persistent_cond_cache),
    so the same prompt after an overwrite would reuse the old file's text-encoder effect."""
    from lora_merge_ext.webui.tab import merge_service
    service = merge_service()
    service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="m"))
    before = host.txt2img(f"a cat {tag}", seed=3).images[0]
    service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1, -2], name="m",
                               overwrite=True))
    after = host.txt2img(f"a cat {tag}", seed=3).images[0]
    service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1, -2], name="fresh"))
    reference = host.txt2img(f"a cat {tag.replace(':m:', ':fresh:')}", seed=3).images[0]
    for stage in ("unet", "cond"):
        old, new, want = getattr(before, stage), getattr(after, stage), getattr(reference, stage)
        assert any(not torch.equal(old[k], new[k]) for k in old), stage
        for k in want:
            torch.testing.assert_close(new[k], want[k])


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_routes_come_from_app_started_with_api(host):
    host.shared.cmd_opts.api = True
    client = host.api_client()
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "api"})
    assert r.status_code == 200, r.text
    assert "api" in host.networks.available_networks


def test_without_api_there_are_no_routes(host, capsys):
    """app_started runs without --api too, and its routes are not behind the UI's login: the merge
    routes exist only when the WebUI serves its own API, like the host's routes."""
    before = sorted(p.name for p in host.lora_dir.iterdir())
    client = host.api_client()
    assert "the /ljl/v1 HTTP routes are off" in capsys.readouterr().out
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "api"})
    assert r.status_code == 404
    assert sorted(p.name for p in host.lora_dir.iterdir()) == before
    host.shared.cmd_opts.nowebui = True  # the API-only server serves them
    assert host.api_client().get("/ljl/v1/loras").status_code == 200


def test_routes_honour_api_auth(host):
    host.shared.cmd_opts.api = True
    host.shared.cmd_opts.api_auth = "user:secret"
    client = host.api_client()
    assert client.get("/ljl/v1/loras").status_code == 401
    assert client.get("/ljl/v1/loras", headers=basic("user", "nope")).status_code == 401
    r = client.get("/ljl/v1/loras", headers=basic("user", "secret"))
    assert r.status_code == 200 and {x["name"] for x in r.json()["loras"]} >= {"a.safetensors", "b.safetensors"}


def _run_load_events(blocks):
    """Call the functions the page runs on load with the components' values (gradio 3 and 4 alike);
    returns {elem_id: update} of their outputs."""
    by_id = blocks.blocks  # component id → component
    shown = {}
    for index, dep in enumerate(blocks.config["dependencies"]):
        targets = [t[1] for t in dep.get("targets", []) if isinstance(t, (list, tuple))]
        if dep.get("trigger") != "load" and "load" not in targets:
            continue
        fn = blocks.fns[dep.get("id", index)].fn
        updates = fn(*[by_id[i].value for i in dep["inputs"]])
        updates = updates if isinstance(updates, (list, tuple)) else [updates]
        for i, update in zip(dep["outputs"], updates):
            shown[by_id[i].elem_id] = update
    return shown


def test_saved_webui_defaults_show_the_right_options_and_never_tick_overwrite(host):
    """Settings → Defaults saves the tab's values by label (ui-config.json).  A saved svd mode with
    dynamic rank shows the svd options and the energy slider when the page loads; a saved
    "overwrite an existing file" (the merge's and the bake's boxes share that label) ticks neither."""
    from modules import script_callbacks
    from modules.ui_loadsave import UiLoadsave
    blocks = next(t[0] for t in script_callbacks.ui_tabs_callback() if t[2] == "ljl_merge")
    saved = {"ljl_merge/mode/value": "svd", "ljl_merge/dynamic rank: keep this fraction of the energy/value": True,
             "ljl_merge/overwrite an existing file/value": True}
    loadsave = UiLoadsave(saved)
    loadsave.add_block(blocks, "ljl_merge")
    components = {c.elem_id: c for c in blocks.blocks.values() if getattr(c, "elem_id", None)}
    assert components["ljl_merge_mode"].value == "svd" and components["ljl_merge_dynamic"].value is True
    assert components["ljl_merge_overwrite"].value is False and components["ljl_merge_bake_overwrite"].value is False
    shown = _run_load_events(blocks)
    assert shown["ljl_merge_svd_options"]["visible"] is True
    assert shown["ljl_merge_energy"]["visible"] is True
    assert shown["ljl_merge_measure"]["visible"] is False
