"""The tab's gradio layout and the standalone command, short of a browser (see test_ui_browser.py)."""
import ast
from pathlib import Path

import gradio as gr
import pytest
import torch

from lora_factory import make_lora
from lora_merge_ext.ui import standalone
from lora_merge_ext.ui.callbacks import MAX_INPUTS, MAX_SLIDERS
from lora_merge_ext.ui.tab import build_tab, js_kwargs

ROOT = Path(__file__).resolve().parents[1]
UI_SOURCES = sorted((ROOT / "lora_merge_ext" / "ui").glob("*.py")) + [ROOT / "lora_merge_ext" / "webui" / "tab.py"]
SMALL = lambda name: "down_blocks_0_attentions_0" in name and "attn2_to_k" in name  # noqa: E731


def elem_ids(blocks):
    return {c.get("props", {}).get("elem_id") for c in blocks.config["components"]} - {None}


def test_standalone_layout_has_every_control(tmp_path):
    make_lora(tmp_path / "a.safetensors", rank=2, keep=SMALL)
    blocks = build_tab([tmp_path])
    ids = elem_ids(blocks)
    for i in range(MAX_INPUTS):
        assert {f"ljl_merge_input_{i}", f"ljl_merge_weight_{i}", f"ljl_merge_lbw_{i}", f"ljl_merge_info_{i}"} <= ids
    assert {f"ljl_merge_slider_{i}" for i in range(MAX_SLIDERS)} <= ids
    assert {"ljl_merge_mode", "ljl_merge_measure", "ljl_merge_rank", "ljl_merge_conv_rank", "ljl_merge_dynamic",
            "ljl_merge_energy",
            "ljl_merge_dtype", "ljl_merge_device", "ljl_merge_name", "ljl_merge_subfolder", "ljl_merge_overwrite",
            "ljl_merge_button", "ljl_merge_status", "ljl_merge_summary", "ljl_merge_plot", "ljl_merge_tag",
            "ljl_merge_advanced", "ljl_merge_bake", "ljl_merge_bake_overwrite", "ljl_merge_refresh"} <= ids
    picker = next(c for c in blocks.config["components"] if c["props"].get("elem_id") == "ljl_merge_input_0")
    assert "a.safetensors" in str(picker["props"]["choices"])
    device = next(c for c in blocks.config["components"] if c["props"].get("elem_id") == "ljl_merge_device")
    assert ("cuda" in str(device["props"]["choices"])) == torch.cuda.is_available()
    js = [d.get("js") for d in blocks.config["dependencies"] if d.get("js")]
    assert js == []  # the standalone page has no WebUI prompt to send to
    assert blocks.config.get("stylesheets", []) == []  # no fonts fetched from outside the machine
    assert not any("googleapis" in str(v) for v in blocks.config.values())


def test_js_keyword_follows_the_gradio_major_version():
    key = "js" if int(gr.__version__.split(".")[0]) >= 4 else "_js"
    assert js_kwargs("() => 1") == {key: "() => 1"}


@pytest.mark.parametrize("path", UI_SOURCES, ids=lambda p: p.name)
def test_sources_stay_portable_to_gradio_4(path):
    """No Component.update(...) (gone in gradio 4) and no gradio component subclasses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            owner = node.func.value
            assert isinstance(owner, ast.Name) and owner.id == "gr", f"{path.name}:{node.lineno}: use gr.update(...)"
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                assert not (isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name)
                            and base.value.id == "gr"), f"{path.name}:{node.lineno}: gradio subclass"
        if isinstance(node, ast.Attribute) and node.attr in ("Box", "style"):
            assert not (isinstance(node.value, ast.Name) and node.value.id == "gr"), f"{path.name}: gr.{node.attr}"


def test_webui_imports_stay_inside_functions():
    tree = ast.parse((ROOT / "lora_merge_ext" / "webui" / "tab.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("modules", "networks", "gradio") for n in names), names


def test_standalone_serves_the_examples_and_writes_elsewhere(tmp_path):
    args = standalone.parse_args(["--out-dir", str(tmp_path / "out")])
    assert args.host == "127.0.0.1" and args.port is None and args.lora_dir is None
    folders = standalone.folders(args)
    assert folders == [tmp_path / "out", standalone.EXAMPLES_DIR] and (tmp_path / "out").is_dir()
    assert sorted(p.name for p in standalone.EXAMPLES_DIR.glob("*.safetensors")) == [
        "example_glow.safetensors", "example_ink.safetensors", "example_pastel.safetensors"]
    lora = standalone.folders(standalone.parse_args(["--lora-dir", str(tmp_path)]))
    assert lora == [tmp_path]
    both = standalone.folders(standalone.parse_args(["--lora-dir", str(tmp_path), "--out-dir", str(tmp_path / "m")]))
    assert both == [tmp_path / "m", tmp_path] and (tmp_path / "m").is_dir()
    same = standalone.folders(standalone.parse_args(["--lora-dir", str(tmp_path), "--out-dir", str(tmp_path)]))
    assert same == [tmp_path]


def test_standalone_refuses_a_missing_lora_dir(tmp_path, capsys):
    assert standalone.main(["--lora-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_default_output_dir_is_outside_the_project(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    out = standalone.default_output_dir()
    assert ROOT not in out.parents and out.name == "loras"


def test_the_offline_page_drops_only_the_tags_that_reach_other_hosts():
    from lora_merge_ext.ui.offline_page import without_external_tags
    template = (Path(gr.__file__).parent / "templates" / "frontend" / "index.html").read_text(encoding="utf-8")
    assert "cdnjs.cloudflare.com" in template and 'rel="preconnect"' in template  # what gradio ships
    page = without_external_tags(template)
    assert "cdnjs" not in page and "preconnect" not in page and "fonts.g" not in page
    assert 'src="./assets/index-' in page and "window.gradio_config" in page  # the app itself stays
    kept = without_external_tags('<script src="/x.js"></script><link rel="stylesheet" href="./a.css" />')
    assert kept == '<script src="/x.js"></script><link rel="stylesheet" href="./a.css" />'


def test_standalone_refuses_a_port_in_use_before_announcing_it(tmp_path, capsys):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert standalone.main(["--out-dir", str(tmp_path), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1


def test_the_port_found_stays_taken_until_the_server_uses_it():
    """Two tools started at once do not both announce 7860: the first keeps its socket listening."""
    first = standalone.free_port("127.0.0.1", 7860)
    with first:
        with standalone.free_port("127.0.0.1", first.getsockname()[1]) as second:
            assert second.getsockname()[1] != first.getsockname()[1]


@pytest.mark.parametrize("port", [None, "7890"])
def test_an_address_not_of_this_machine_is_blamed_on_the_host_not_the_port(tmp_path, capsys, port):
    argv = ["--out-dir", str(tmp_path), "--host", "192.0.2.1"] + (["--port", port] if port else [])
    assert standalone.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 192.0.2.1: ") and err.rstrip().endswith("(check --host)"), err
    assert err.count("\n") == 1


def test_an_ipv6_address_is_announced_in_brackets():
    assert standalone.url_of("::1", 7897) == "http://[::1]:7897/"
    assert standalone.url_of("127.0.0.1", 7860) == "http://127.0.0.1:7860/"


def test_an_out_dir_inside_the_lora_dir_lists_each_file_once(tmp_path):
    from lora_merge_ext.ui.library import LoraLibrary
    make_lora(tmp_path / "a.safetensors", rank=2, keep=lambda n: "attn2_to_k" in n)
    (tmp_path / "merged").mkdir()
    make_lora(tmp_path / "merged" / "m1.safetensors", rank=2, keep=lambda n: "attn2_to_k" in n)
    folders = standalone.folders(standalone.parse_args(["--lora-dir", str(tmp_path), "--out-dir", str(tmp_path / "merged")]))
    assert LoraLibrary.of(*folders).refresh() == ["a.safetensors", "m1.safetensors"]


def test_standalone_without_gradio_is_one_error_line(tmp_path, capsys, monkeypatch):
    """`pip install .` leaves out the ui extra: the ui command says what to install, status 2."""
    import sys
    monkeypatch.setitem(sys.modules, "gradio", None)  # what an import of an absent package meets
    assert standalone.main(["--lora-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the ui command needs gradio")
    assert "pip install 'lora-merge-ext[ui]'" in err


def test_standalone_with_gradio_versions_that_clash_says_so(tmp_path, capsys, monkeypatch):
    """gradio installed, but an import inside it fails (a newer huggingface_hub without HfFolder): the
    error says the versions clash rather than that gradio is missing."""
    import sys
    fake = tmp_path / "site" / "gradio"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"cannot import name 'HfFolder' from 'huggingface_hub'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "gradio", raising=False)
    assert standalone.main(["--lora-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: the ui command could not import gradio (cannot import name 'HfFolder' from "
                          "'huggingface_hub': versions that do not work together): pip install 'lora-merge-ext[ui]'")


@pytest.mark.parametrize("argv0, shown", [("/venv/bin/lora-merge", "lora-merge"),
                                          ("/src/lora_merge_ext/__main__.py", "python -m lora_merge_ext")])
def test_usage_names_the_command_as_it_was_run(monkeypatch, argv0, shown):
    import sys
    from lora_merge_ext import cli
    monkeypatch.setattr(sys, "argv", [argv0, "merge"])
    assert cli.build_parser().format_usage().startswith(f"usage: {shown} ")
    assert standalone.build_parser().format_usage().startswith(f"usage: {shown} ui ")
