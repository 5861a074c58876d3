"""How the extension loads into the WebUI (issue 3, points 1 and 8), how tags are read (point 2),
and checks that the host double keeps the host's lifecycle."""
import ast
import configparser
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.webui.tag_request import read_tag
from host_double import LORA_EXTENSION_DIR
from host_double.fixtures import assert_close, host_factory, outputs, sd1_loras, sdxl_loras  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


# --- the entry script -------------------------------------------------------------------------

def test_scripts_folder_holds_one_small_wiring_file():
    assert sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix == ".py") == ["ljl_merge.py"]
    tree = ast.parse((ROOT / "scripts" / "ljl_merge.py").read_text())
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign)) for node in tree.body)
    assert len([n for n in tree.body if not isinstance(n, ast.Expr) or not isinstance(n.value, ast.Constant)]) <= 5


def test_loaded_like_the_host_loads_scripts(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    entries = [d for d in host.scripts.scripts_data if d.path.endswith("ljl_merge.py")]
    assert len(entries) == 1 and entries[0].module.__name__ == "ljl_merge.py"
    assert "ljl_merge.py" not in sys.modules
    assert str(ROOT) == entries[0].basedir
    runner = host.scripts.scripts_txt2img
    ours = [s for s in runner.alwayson_scripts if s.filename.endswith("ljl_merge.py")]
    assert len(ours) == 1 and ours[0] not in runner.selectable_scripts
    # before_ui runs in reverse registration order: `ljl` is registered before the built-in `lora`
    assert list(host.extra_networks.extra_network_registry) == ["hypernet", "ljl", "lora"]


def test_uses_the_host_networks_module_itself(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    from lora_merge_ext.webui.host_lora import lora_modules
    assert lora_modules().networks is sys.modules["networks"]
    host.txt2img("x <lora:C:1> <ljl:J:1,0>", seed=1)
    names = [net.name for net in host.networks.loaded_networks]
    assert names[0] == "C" and names[1].startswith("J@ljl:") and len(names) == 2


def test_imports_the_lora_modules_from_the_builtin_folder_when_not_yet_imported(host_factory, sd1_loras,
                                                                                 monkeypatch):
    host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    for name in ("networks", "network", "network_lora"):
        monkeypatch.delitem(sys.modules, name)
    path_before = list(sys.path)
    from lora_merge_ext.webui.host_lora import LoraUnavailable, lora_modules
    with pytest.raises(LoraUnavailable, match="has not started"):
        lora_modules()                  # imported, but unpatched: lora_script.py never ran on this copy
    assert os.path.dirname(sys.modules["networks"].__file__) == LORA_EXTENSION_DIR
    assert sys.path == path_before
    from types import SimpleNamespace
    sys.modules["networks"].originals = SimpleNamespace(Linear_forward=lambda *a: None)  # as lora_script sets it
    assert lora_modules().networks is sys.modules["networks"]


def test_optional_parts_missing_do_not_stop_loading(tmp_path, monkeypatch):
    from lora_merge_ext.webui import register
    assert register._optional("lora_merge_ext.webui.no_such_part") is None
    (tmp_path / "partpkg").mkdir()
    (tmp_path / "partpkg" / "__init__.py").write_text("")
    (tmp_path / "partpkg" / "broken.py").write_text("import no_such_dependency_of_a_part\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert register._optional("partpkg.absent") is None
    with pytest.raises(ModuleNotFoundError):       # a part that is there but broken is not hidden
        register._optional("partpkg.broken")


@pytest.mark.parametrize("builtin_folders", [("Lora",), ("sd_forge_lora",)])
def test_metadata_ini_requirements_are_met_where_the_builtin_lora_is_installed(builtin_folders):
    """The host's rule (v1.10.1 extensions.py:69-73, 253-277): installed extensions are looked up by
    their folder names as they are, requirement names lower-cased, `a|b` meaning either; an unmet
    one is reported at every start."""
    ini = configparser.ConfigParser()
    ini.read(ROOT / "metadata.ini")
    installed = {*builtin_folders, "sd-webui-ljl-merge-main"}
    listed = ini.get("Extension", "Requires", fallback="").lower().replace(",", " ").split()
    unmet = [item for item in listed if not any(name in installed for name in item.split("|"))]
    assert unmet == []
    # script order compares lower-cased names (scripts.py:396-454): the built-in Lora's scripts first
    assert ini["scripts/ljl_merge.py"]["After"].strip() == "lora"


@pytest.mark.parametrize("encoding", ["cp936", "cp949", "cp950", "cp1252"])
def test_metadata_ini_reads_in_any_windows_code_page(encoding):
    """The host reads metadata.ini without an encoding (extensions.py:50): on Windows that is the ANSI
    code page, and a non-ASCII byte there makes every start report an error and lose `After`."""
    ini = configparser.ConfigParser()
    ini.read(ROOT / "metadata.ini", encoding=encoding)
    assert ini["scripts/ljl_merge.py"]["After"].strip() == "lora"


def test_install_py_installs_nothing_and_uses_no_network(tmp_path):
    (tmp_path / "launch.py").write_text(textwrap.dedent("""
        import pathlib
        LOG = pathlib.Path(__file__).with_name("calls.log")
        def _log(name, *args):
            with LOG.open("a") as f:
                f.write(name + repr(args) + "\\n")
        def is_installed(package): _log("is_installed", package); return True
        def run_pip(*args, **kw): _log("run_pip", *args)
        def run(*args, **kw): _log("run", *args)
    """))
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import socket, subprocess
        def _no(*a, **k):
            raise RuntimeError("install.py must not use the network or run programs")
        socket.socket = _no
        socket.create_connection = _no
        subprocess.Popen = _no
    """))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, str(ROOT / "install.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "calls.log").exists()


# --- reading a tag ----------------------------------------------------------------------------

def test_read_tag_forms():
    r = read_tag(["J", "2.5*8,0*4"])
    assert (r.name, r.sigma, r.te, r.unet, r.lbw) == ("J", "2.5*8,0*4", 1.0, 1.0, None)
    r = read_tag(["J", "style=1,face=0", "lbw=MIDD", "te=0.5"])   # named components stay the vector
    assert (r.sigma, r.lbw, r.te, r.unet) == ("style=1,face=0", "MIDD", 0.5, 0.5)
    r = read_tag(["J", "x=1,face=0", "lbw=MIDD"])                 # a component named x leads the vector
    assert (r.sigma, r.lbw, r.x) == ("x=1,face=0", "MIDD", 1.0)
    r = read_tag(["J", "face=1"])
    assert r.sigma == "face=1"
    r = read_tag(["J", "start=0.5,face=1"])  # components named like lora-block-weight's options, with a second entry
    assert r.sigma == "start=0.5,face=1"
    assert read_tag(["J", "face=1,step=0"]).sigma == "face=1,step=0"
    r = read_tag(["J", "te=0", "unet=1.5"])
    assert (r.sigma, r.te, r.unet) == ("1", 0.0, 1.5)
    r = read_tag(["my lora ", " 1,0 ", "lbw= 1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1 "])
    assert (r.name, r.sigma, r.lbw) == ("my lora", "1,0", "1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1")
    r = read_tag(["J", "0,1", "w=MIDD", "x=0.25"])                 # lora-block-weight's spellings
    assert (r.sigma, r.lbw, r.x) == ("0,1", "MIDD", 0.25)
    assert read_tag(["J", "lbw=X,1"]).x == 1.0


@pytest.mark.parametrize("items,words", [
    ([""], "name is empty"), (["J", "1", "0.5"], "unexpected item"), (["J", "te=x"], "not a number"),
    (["J", "unet=inf"], "not a finite number"), (["J", "1", "te=1", "te=2"], "given twice"),
    (["J", "dyn=4"], "dyn= is not supported"), (["J", "lbw= "], "lbw= is empty"),
    (["J", "lbw=ALL", "w=ALL"], "lbw/w= is given twice"), (["J", "x=2"], "x= sets X in lbw=, but the tag has no lbw="),
    (["J", "lbw=ALL", "x=nan"], "x='nan' is not a finite number"),
    (["J", "lbwe=ATTNDEEPOFF"], "lbwe= is a lora-block-weight option that <ljl> does not support"),
    (["J", "1", "lbw=ALL", "start=10"], "start= is a lora-block-weight option"),
    (["J", "1", "stop = 20"], "stop= is a lora-block-weight option"),
])
def test_read_tag_errors(items, words):
    with pytest.raises(LoraMergeError, match=words):
        read_tag(items)


# --- the double keeps the host's lifecycle ----------------------------------------------------

def test_double_load_networks_clears_every_call_and_activation_order(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    calls = []
    registry = host.extra_networks.extra_network_registry
    for name in ("lora", "ljl"):
        net = registry[name]
        original = net.activate
        net.activate = (lambda orig, n: lambda p, params: (calls.append((n, len(params))), orig(p, params)))(original, name)
    host.txt2img("x <lora:C:1>", seed=1, n_iter=2)
    assert calls == [("lora", 1), ("ljl", 0)] * 2            # mentioned first, then the rest with []
    calls.clear()
    host.txt2img("x <ljl:J:1> <lora:C:1>", seed=1)
    assert calls == [("ljl", 1), ("lora", 1)]
    host.networks.load_networks([])
    assert host.networks.loaded_networks == []


def test_double_layers_carry_real_sd_names(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    mapping = host.sd_model.network_layer_mapping
    for name in ("diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
                 "diffusion_model_input_blocks_1_0_in_layers_2", "diffusion_model_input_blocks_3_0_op",
                 "diffusion_model_middle_block_1_transformer_blocks_0_attn1_to_v",
                 "diffusion_model_output_blocks_11_1_transformer_blocks_0_attn1_to_q",
                 "transformer_text_model_encoder_layers_0_self_attn_q_proj"):
        assert name in mapping
    assert mapping["diffusion_model_input_blocks_3_0_op"].stride == (2, 2)


def test_double_sdxl_text_encoder_two_is_multihead_attention(host_factory, sdxl_loras):
    import torch
    host = host_factory("sdxl", lora_dir=sdxl_loras["J"].parent)
    mapping = host.sd_model.network_layer_mapping
    assert isinstance(mapping["1_model_transformer_resblocks_0_attn"], torch.nn.MultiheadAttention)
    assert "0_transformer_text_model_encoder_layers_0_self_attn_q_proj" in mapping
    assert "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in mapping
    host.txt2img("x <ljl:J:1,0>", seed=1)
    net = host.networks.loaded_networks[0]
    assert {"1_model_transformer_resblocks_0_attn_q_proj", "1_model_transformer_resblocks_0_attn_out_proj"} <= set(net.modules)
    te2 = outputs(host.txt2img("x <ljl:J:1,0>", seed=1))
    assert_close(te2, outputs(host.txt2img("x <lora:A:1>", seed=1)))


def test_a_lora_extension_that_applies_loras_another_way_is_named(host_factory, sd1_loras, monkeypatch):
    """Forge's `networks` hands LoRAs to a different patcher (no per-layer merge); tags are skipped
    with that reason instead of failing somewhere inside the host."""
    import types
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    forge_like = types.ModuleType("networks")
    forge_like.loaded_networks = []
    monkeypatch.setitem(sys.modules, "networks", forge_like)
    res = host.txt2img("x <ljl:J:1>", seed=1)
    assert "applies LoRA another way (Forge?)" in res.comments


def test_missing_builtin_lora_folder_is_named(host_factory, sd1_loras, monkeypatch, tmp_path):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    from modules import extensions, paths_internal
    from lora_merge_ext.webui.host_lora import unavailable_reason
    assert unavailable_reason() is None
    monkeypatch.setattr(extensions, "extensions", [e for e in extensions.extensions if e.name != "Lora"])
    monkeypatch.setattr(paths_internal, "extensions_builtin_dir", str(tmp_path))
    for name in ("networks", "network", "network_lora"):
        monkeypatch.delitem(sys.modules, name)
    assert "is not installed" in unavailable_reason()
    assert "is not installed" in host.txt2img("x <ljl:J:1>", seed=1).comments


def test_old_forge_networks_with_a1111_names_as_stubs_is_named(host_factory, sd1_loras, monkeypatch):
    """Old Forge and reForge keep A1111's function names in `networks` as no-op stubs and an empty
    `LoraPatches` class (A1111_HOST_API.md §9.2, §9.3), so `network_apply_weights` being there does not
    mean layers are patched; only A1111's `networks.originals` holds the saved torch forwards (§2.5)."""
    import types
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    stub = types.ModuleType("networks")
    stub.loaded_networks = []
    stub.network_apply_weights = lambda layer: None
    stub.assign_network_names_to_compvis_modules = lambda sd_model: None
    stub.convert_diffusers_name_to_compvis = lambda key, is_sd2: key
    stub.originals = type("LoraPatches", (), {})()
    for name in ("available_networks", "available_network_aliases", "forbidden_network_aliases"):
        setattr(stub, name, getattr(host.networks, name))
    monkeypatch.setitem(sys.modules, "networks", stub)
    res = host.txt2img("x <ljl:J:1>", seed=1)
    assert "applies LoRA another way (Forge?)" in res.comments
    assert stub.loaded_networks == []


def test_forge2_lora_extension_is_named(host_factory, sd1_loras, monkeypatch, tmp_path):
    """Current Forge: `networks` comes from extensions-builtin/sd_forge_lora (canonical name
    sd_forge_lora, so no `lora` extension entry), without `network_apply_weights` or
    `originals`, and there is no `network_lora` module (A1111_HOST_API.md §9.1)."""
    import types
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    from modules import extensions, paths_internal
    forge = types.ModuleType("networks")
    forge.loaded_networks = []
    forge.load_networks = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "networks", forge)
    monkeypatch.delitem(sys.modules, "network_lora")
    monkeypatch.setattr(extensions, "extensions", [e for e in extensions.extensions if e.name != "Lora"])
    monkeypatch.setattr(paths_internal, "extensions_builtin_dir", str(tmp_path))
    res = host.txt2img("x <ljl:J:1>", seed=1)
    assert "applies LoRA another way (Forge?)" in res.comments
