"""The /ljl/v1 JSON routes on a real gradio app (the tab's Blocks served by gradio's FastAPI app)."""
import base64
import os
import threading

import gradio as gr
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lora_factory import make_lora
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.http_api import parse_api_auth, register
from lora_merge_ext.loading import load_lora
from lora_merge_ext.ui.handlers import MergeService
from lora_merge_ext.ui.library import LoraLibrary
from lora_merge_ext.ui.tab import build_tab

SMALL = lambda name: "down_blocks_0_attentions" in name and "attn2_to_k" in name  # noqa: E731


@pytest.fixture
def lora_dir(tmp_path):
    d = tmp_path / "Lora"
    d.mkdir()
    make_lora(d / "a.safetensors", rank=2, seed=1, keep=SMALL)
    make_lora(d / "b.safetensors", rank=2, seed=2, keep=SMALL)
    return d


def gradio_app(service, credentials=None):
    """The tab's Blocks served by gradio's own FastAPI app, with the routes added (as on_app_started does)."""
    demo = build_tab(service)
    app = gr.routes.App.create_app(demo)
    register(app, service, credentials=credentials)
    return app


@pytest.fixture
def client(lora_dir):
    return TestClient(gradio_app(MergeService(LoraLibrary.of(lora_dir))))


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_routes_live_beside_gradio(client):
    assert client.get("/config").status_code == 200
    body = client.get("/ljl/v1/loras").json()
    assert [x["name"] for x in body["loras"]] == ["a.safetensors", "b.safetensors"]


def test_info_reports_family_rank_alpha(client):
    body = client.get("/ljl/v1/info", params={"name": "a.safetensors"}).json()
    assert body["family"] == "sd1" and body["ranks"] == [2] and body["alphas"] == [1.0] and body["modules"] == 2
    r = client.get("/ljl/v1/info", params={"name": "/etc/passwd"})
    assert r.status_code == 400 and "outside the Lora folders" in r.json()["error"]


def test_merge_route_writes_the_file_and_answers_with_its_facts(client, lora_dir):
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", str(lora_dir / "b.safetensors")],
                                           "weights": [1, 0.5], "output": "joined", "measure": True})
    assert r.status_code == 200, r.text
    body = r.json()
    path = lora_dir / "joined.safetensors"
    assert body["file"] == "joined.safetensors" and body["size"] == path.stat().st_size
    assert body["sha256"] == load_lora(path).metadata["sshs_model_hash"]
    assert body["ranks"] == [4] and [c["name"] for c in body["components"]] == ["a", "b"]
    # the default output is fp16: the report measures the saved factors, so fp16 rounding and no more
    assert 1e-5 < body["report"]["max_error"] < 2e-3 and len(body["report"]["rows"]) == 2
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "weights": [1, 0.5],
                                           "output": "joined32", "dtype": "fp32", "measure": True})
    assert r.status_code == 200, r.text
    assert r.json()["report"]["max_error"] < 1e-5  # a concat is exact in float32
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "quick"})
    assert r.status_code == 200, r.text
    assert r.json()["report"]["measured"] is False and "max_error" not in r.json()["report"]


def test_svd_route_reports_errors(client):
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "low",
                                           "mode": "svd", "rank": 1})
    assert r.status_code == 200, r.text
    assert r.json()["ranks"] == [1]
    assert all(0 < row["error"] < 1 for row in r.json()["report"]["rows"])


@pytest.mark.parametrize("output", ["../escape", "/tmp/abs", "sub/x", "..", ""])
def test_bad_output_names_get_400_and_nothing_is_written(client, lora_dir, output):
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": output})
    assert r.status_code == 400 and r.json()["error"]
    assert sorted(p.name for p in lora_dir.parent.rglob("*.safetensors")) == ["a.safetensors", "b.safetensors"]


def test_paths_outside_the_lora_folders_are_refused(client, tmp_path):
    outside = tmp_path / "outside.safetensors"
    make_lora(outside, rank=2, seed=3, keep=SMALL)
    for spec in (str(outside), "../outside.safetensors"):
        r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", spec], "output": "x"})
        assert r.status_code == 400 and "outside the Lora folders" in r.json()["error"]


def test_overwrite_rule_and_inputs_protected(client, lora_dir):
    req = {"inputs": ["a.safetensors", "b.safetensors"], "output": "m"}
    assert client.post("/ljl/v1/merge", json=req).status_code == 200
    old = (lora_dir / "m.safetensors").read_bytes()
    r = client.post("/ljl/v1/merge", json={**req, "weights": [2, 2]})
    assert r.status_code == 400 and "already exists" in r.json()["error"]
    assert "allow overwrite" in r.json()["error"] and "tick" not in r.json()["error"]
    assert (lora_dir / "m.safetensors").read_bytes() == old
    r = client.post("/ljl/v1/merge", json={**req, "weights": [2, 2], "overwrite": True})
    assert r.status_code == 200 and (lora_dir / "m.safetensors").read_bytes() != old
    r = client.post("/ljl/v1/merge", json={**req, "output": "a", "overwrite": True})
    assert r.status_code == 400 and "one of the inputs" in r.json()["error"]


def test_bake_route(client, lora_dir):
    client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "j"})
    r = client.post("/ljl/v1/bake", json={"source": "j.safetensors", "sigma": "0,1", "output": "only_b"})
    assert r.status_code == 200, r.text
    assert r.json()["ranks"] == [2] and (lora_dir / "only_b.safetensors").is_file()
    r = client.post("/ljl/v1/bake", json={"source": "j.safetensors", "sigma": "1,2,3", "output": "bad"})
    assert r.status_code == 400 and "expected" in r.json()["error"]


@pytest.mark.parametrize("field", ["rank", "conv_rank"])
def test_a_fractional_rank_is_refused_not_truncated(client, lora_dir, field):
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "low",
                                           "mode": "svd", "rank": 2, field: 1.5})
    assert r.status_code == 400 and "1.5 must be a positive whole number" in r.json()["error"]
    assert not (lora_dir / "low.safetensors").exists()


@pytest.mark.parametrize("mode", ["concat", "join", "add"])
def test_svd_options_outside_svd_are_refused_as_by_the_cli(client, lora_dir, mode):
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "full",
                                           "mode": mode, "rank": 2, "energy": 0.5})
    assert r.status_code == 400 and "rank and energy only apply to svd merges" in r.json()["error"]
    assert not (lora_dir / "full.safetensors").exists()


def test_schema_errors_are_rejected_by_fastapi(client, lora_dir):
    assert client.post("/ljl/v1/merge", json={"output": "x"}).status_code == 422
    two = {"inputs": ["a.safetensors", "b.safetensors"], "output": "x", "mode": "svd"}
    # no coercion: true is not a rank of 1, "8" not a number, 1 not a name, "yes" not a flag
    for wrong in ({"rank": True}, {"rank": "8"}, {"weights": ["1", "2"]}, {"overwrite": "yes"},
                  {"inputs": ["a.safetensors", 1]}, {"output": 5}, {"energy": "0.9"}):
        r = client.post("/ljl/v1/merge", json={**two, **wrong})
        assert r.status_code == 422, (wrong, r.text)
    r = client.post("/ljl/v1/bake", json={"source": "a.safetensors", "sigma": 0.5, "output": "half", "overwrite": 1})
    assert r.status_code == 422
    assert listing_of(lora_dir) == ["a.safetensors", "b.safetensors"]
    r = client.post("/ljl/v1/bake", json={"source": "a.safetensors", "sigma": 0.5, "output": "half"})
    assert r.status_code == 200, r.text  # a single Σ number may come as a JSON number
    assert torch.allclose(deltas(lora_dir / "half.safetensors")["lora_unet_down_blocks_0_attentions_0_transformer_"
                                                                "blocks_0_attn2_to_k"],
                          0.5 * deltas(lora_dir / "a.safetensors")["lora_unet_down_blocks_0_attentions_0_"
                                                                   "transformer_blocks_0_attn2_to_k"], atol=1e-3)


def test_value_lists_longer_than_the_inputs_are_refused(client, lora_dir):
    two = {"inputs": ["a.safetensors", "b.safetensors"], "output": "x"}
    for extra, what in (({"weights": [1, 2, 3]}, "3 weight values for 2 inputs"),
                        ({"weights": [1.0] * 1000}, "1000 weight values for 2 inputs"),
                        ({"lbw": ["ALL", None, None]}, "3 lbw values for 2 inputs")):
        r = client.post("/ljl/v1/merge", json={**two, **extra})
        assert r.status_code == 400 and what in r.json()["error"], r.text
    assert listing_of(lora_dir) == ["a.safetensors", "b.safetensors"]


def test_names_the_file_system_cannot_take_get_400_not_500(client, lora_dir):
    long_name = "y" * 300
    r = client.get("/ljl/v1/info", params={"name": long_name})
    assert r.status_code == 400 and "cannot be looked up" in r.json()["error"]
    for bad in (long_name, "b.safetensors\u0000"):
        r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", bad.encode().decode("unicode_escape")],
                                               "output": "q"})
        assert r.status_code == 400 and "cannot be looked up" in r.json()["error"], r.text
    r = client.post("/ljl/v1/bake", json={"source": long_name, "output": "q"})
    assert r.status_code == 400 and "cannot be looked up" in r.json()["error"]
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "q",
                                           "mode": "m" * 100_000})
    assert r.status_code == 400 and len(r.json()["error"]) < 200
    assert listing_of(lora_dir) == ["a.safetensors", "b.safetensors"]


def test_unknown_fields_are_refused_not_ignored(client, lora_dir):
    """A typo ("weight", "overwite", "ranks") must not give a merge with the defaults."""
    two = {"inputs": ["a.safetensors", "b.safetensors"], "output": "typo"}
    for wrong in ({"weight": [1, -1]}, {"overwite": True}, {"mode": "svd", "ranks": 2}):
        r = client.post("/ljl/v1/merge", json={**two, **wrong})
        assert r.status_code == 422 and next(iter(wrong.keys() - {"mode"})) in r.text, (wrong, r.text)
    r = client.post("/ljl/v1/bake", json={"source": "a.safetensors", "sigmas": "0.5", "output": "typo"})
    assert r.status_code == 422 and "sigmas" in r.text
    assert listing_of(lora_dir) == ["a.safetensors", "b.safetensors"]


def test_an_output_name_with_a_space_before_the_extension_is_refused(client, lora_dir):
    """'x .safetensors' would be tagged <ljl:x :…>, which finds x.safetensors."""
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "x .safetensors"})
    assert r.status_code == 400 and "space before .safetensors" in r.json()["error"]
    assert listing_of(lora_dir) == ["a.safetensors", "b.safetensors"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_in_the_lora_folder_does_not_hang_a_merge(client, lora_dir):
    """The alias check reads every .safetensors header; opening a pipe would wait for a writer forever."""
    os.mkfifo(lora_dir / "fifo.safetensors")
    result = []
    worker = threading.Thread(target=lambda: result.append(client.post(
        "/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "after_fifo"})), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # let the stuck open() return, so the test run can end
        with open(lora_dir / "fifo.safetensors", "wb"):
            pass
        pytest.fail("the merge hung on the named pipe")
    assert result[0].status_code == 200, result[0].text
    assert (lora_dir / "after_fifo.safetensors").is_file()


def test_a_file_with_a_deeply_nested_header_does_not_break_merges(client, lora_dir):
    """Its header is read for an alias; too deep for json is no alias, not a 500."""
    meta = b'{"__metadata__":{"ss_output_name":"deepname"},"junk":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (lora_dir / "deep.safetensors").write_bytes(len(meta).to_bytes(8, "little") + meta)
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "deepname"})
    assert r.status_code == 200, r.text


def listing_of(folder):
    return sorted(p.name for p in folder.iterdir())


def deltas(path):
    return {n: m.delta() for n, m in load_lora(path).modules.items()}


def test_api_auth_credentials_are_honoured(lora_dir):
    creds = parse_api_auth("alice:s3cret,bob:pa:ss")
    assert creds == {"alice": "s3cret", "bob": "pa:ss"}
    client = TestClient(gradio_app(MergeService(LoraLibrary.of(lora_dir)), credentials=creds))
    assert client.get("/ljl/v1/loras").status_code == 401
    assert client.get("/ljl/v1/loras", headers=basic("alice", "wrong")).status_code == 401
    assert client.get("/ljl/v1/loras", headers=basic("mallory", "s3cret")).status_code == 401
    assert client.get("/ljl/v1/loras", headers=basic("alice", "s3cret")).status_code == 200
    assert client.get("/ljl/v1/loras", headers=basic("bob", "pa:ss")).status_code == 200
    r = client.post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "x"})
    assert r.status_code == 401 and not (lora_dir / "x.safetensors").exists()
    assert client.get("/config").status_code == 200  # gradio's own routes are not ours to guard


def test_api_auth_text_forms():
    assert parse_api_auth(None) is None and parse_api_auth("  ") is None
    # as modules/api/api.py splits it: the space after the comma belongs to the second user's name
    assert parse_api_auth("u:p, u2:p2 ") == {"u": "p", " u2": "p2 "}
    with pytest.raises(LoraMergeError, match="user:password"):
        parse_api_auth("nocolon")


def test_plain_fastapi_app(lora_dir):
    app = FastAPI()
    register(app, MergeService(LoraLibrary.of(lora_dir)))
    r = TestClient(app).post("/ljl/v1/merge", json={"inputs": ["a.safetensors", "b.safetensors"], "output": "p"})
    assert r.status_code == 200 and (lora_dir / "p.safetensors").is_file()
