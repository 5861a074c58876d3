"""End to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): start the
standalone UI the way a new user does (the shipped examples, merges written to --out-dir), pick the two
example LoRAs, merge, move a slider, read the tag, and check the file on disk.

Set LJL_SCREENSHOT=docs/screenshot-tab.png to also save the README screenshot.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from lora_merge_ext.layout import layout_of
from lora_merge_ext.loading import load_lora
from lora_merge_ext.ui.standalone import EXAMPLES_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]
SERVER_START_GUARD_S = 600  # a safety net against a hung server, not a speed requirement

if not os.path.exists(CHROMIUM):
    pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("merged")
    log_path = out_dir.parent / "server.log"
    port = free_port()
    code = "import sys; from lora_merge_ext.ui.standalone import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, "--out-dir", str(out_dir), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_GUARD_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the standalone UI exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url + "ljl/v1/loras") as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the standalone UI did not answer:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url, out_dir
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(server, browser):
    url, _ = server
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(120_000)
    sync_api.expect.set_options(timeout=120_000)  # merges on a busy machine: patience, not a limit
    pg.goto(url)
    pg.wait_for_selector("#ljl_merge_input_0 input")
    yield pg
    pg.close()


@pytest.fixture(autouse=True)
def no_error_toasts(request):
    """After each test on the shared page: gradio showed no error (an event handler that raised or
    answered with the wrong number of outputs puts up a toast and marks its outputs "Error")."""
    yield
    if "page" in request.fixturenames:
        pg = request.getfixturevalue("page")
        pg.wait_for_timeout(500)  # a late event's toast
        toasts = pg.locator(".toast-body.error")
        assert toasts.count() == 0, toasts.all_inner_texts()


def first(pg, elem_id):
    """gradio 3 repeats a Markdown's elem_id on its inner element: the outer one."""
    return pg.locator(f"#{elem_id}").first


def pick(pg, row, text):
    choose(pg, f"ljl_merge_input_{row}", text)  # the dropdown is searchable: typing filters it


def set_name(pg, name):
    pg.locator("#ljl_merge_name textarea").fill(name)


def merge_and_wait(pg, expected_status):
    pg.click("#ljl_merge_button")
    expect = sync_api.expect
    expect(first(pg, "ljl_merge_status")).to_contain_text(expected_status)


def test_the_page_asks_nothing_of_other_hosts(server, browser):
    """gradio's template loads a script from cdnjs and preconnects to Google's font servers: the
    standalone tool serves the page without them, so it works offline and phones nowhere."""
    from urllib.parse import urlparse
    url, _ = server
    pg = browser.new_page()
    requested = []
    pg.on("request", lambda request: requested.append(request.url))
    try:
        pg.goto(url)
        pg.wait_for_selector("#ljl_merge_input_0 input")
        pg.wait_for_load_state("load")
        seen = -1
        while seen != len(requested):  # until two quiet seconds (gradio 4 holds a heartbeat open: no "networkidle")
            seen = len(requested)
            pg.wait_for_timeout(2000)
        html = pg.content()
    finally:
        pg.close()
    local = [u for u in requested if urlparse(u).hostname == "127.0.0.1"]
    assert len(local) > 10 and local == [u for u in requested if not u.startswith("data:")], requested
    assert "cdnjs" not in html and "fonts.googleapis" not in html


def test_merge_the_two_examples_and_build_a_tag(page, server):
    _, out_dir = server
    expect = sync_api.expect
    pick(page, 0, "example_ink")
    pick(page, 1, "example_pastel")
    expect(first(page, "ljl_merge_info_0")).to_contain_text("SD1 · rank 2 · alpha 1 · 64 modules")
    expect(first(page, "ljl_merge_info_1")).to_contain_text("SD1 · rank 2")

    set_name(page, "browser_mix")
    merge_and_wait(page, "✔ wrote browser_mix.safetensors")
    tag = page.locator("#ljl_merge_tag textarea")
    expect(tag).to_have_value("<ljl:browser_mix:1,1>")
    expect(page.locator("#ljl_merge_slider_1")).to_contain_text("example_pastel (rank 2)")

    slider = page.locator("#ljl_merge_slider_1 input[type=number]")
    slider.fill("0.25")
    slider.press("Enter")
    expect(tag).to_have_value("<ljl:browser_mix:1,0.25>")

    path = out_dir / "browser_mix.safetensors"
    assert path.is_file()
    merged = load_lora(path)
    expect(first(page, "ljl_merge_summary")).to_contain_text(merged.metadata["sshs_model_hash"])
    expect(first(page, "ljl_merge_summary")).to_contain_text("(not measured)")  # "measure" was not ticked
    assert [c.name for c in layout_of(merged).components] == ["example_ink", "example_pastel"]
    ink = load_lora(EXAMPLES_DIR / "example_ink.safetensors")
    pastel = load_lora(EXAMPLES_DIR / "example_pastel.safetensors")
    assert set(merged.modules) == set(ink.modules) and merged.max_rank == 4
    for name, module in merged.modules.items():
        expected = ink.modules[name].delta() + pastel.modules[name].delta()
        torch.testing.assert_close(module.delta(), expected, rtol=2e-3, atol=2e-5)  # saved as fp16
    assert not list(EXAMPLES_DIR.glob("browser_*"))  # the shipped examples are never written to

    shot = out_dir.parent / "screenshot-tab.png"
    top = page.locator("#ljl_merge_tab").bounding_box()["y"]  # from the tab down: the folder line shows tmp paths
    size = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    page.screenshot(path=str(shot), full_page=True,
                    clip={"x": 0, "y": max(top - 8, 0), "width": size[0], "height": size[1] - max(top - 8, 0)})
    target = os.environ.get("LJL_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target)

    page.click("#ljl_merge_bake")  # "Save with Σ" at the current sliders
    expect(first(page, "ljl_merge_bake_status")).to_contain_text("✔ wrote browser_mix_baked.safetensors (Σ = 1,0.25")
    baked = load_lora(out_dir / "browser_mix_baked.safetensors")
    for name, module in baked.modules.items():
        expected = ink.modules[name].delta() + 0.25 * pastel.modules[name].delta()
        torch.testing.assert_close(module.delta(), expected, rtol=2e-3, atol=2e-5)

    # the merge's "overwrite" box does not let a bake replace a file: the bake has its own
    page.locator("#ljl_merge_overwrite input").check()
    slider.fill("0.5")
    slider.press("Enter")
    expect(tag).to_have_value("<ljl:browser_mix:1,0.5>")
    page.click("#ljl_merge_bake")
    expect(first(page, "ljl_merge_bake_status")).to_contain_text("already exists")
    assert load_lora(out_dir / "browser_mix_baked.safetensors").metadata == baked.metadata
    page.locator("#ljl_merge_bake_overwrite input").check()
    page.click("#ljl_merge_bake")
    expect(first(page, "ljl_merge_bake_status")).to_contain_text("✔ wrote browser_mix_baked.safetensors (Σ = 1,0.5")
    page.locator("#ljl_merge_overwrite input").uncheck()
    page.locator("#ljl_merge_bake_overwrite input").uncheck()


def test_a_reloaded_page_lists_files_added_since(server, browser):
    url, out_dir = server
    shutil.copyfile(EXAMPLES_DIR / "example_ink.safetensors", out_dir / "late_arrival.safetensors")
    (out_dir / "late_folder").mkdir(exist_ok=True)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        pg.set_default_timeout(120_000)
        pg.goto(url)
        pg.wait_for_selector("#ljl_merge_input_0 input")
        pick(pg, 0, "late_arrival")  # no click on refresh
        sync_api.expect(first(pg, "ljl_merge_info_0")).to_contain_text("SD1 · rank 2")
        sync_api.expect(first(pg, "ljl_merge_subfolder")).to_contain_text("late_folder")
    finally:
        pg.close()
        (out_dir / "late_arrival.safetensors").unlink(missing_ok=True)


def test_the_tag_builder_opens_any_file(page):
    expect = sync_api.expect
    box = page.locator("#ljl_merge_tag_file input")
    box.click()
    box.fill("example_glow")
    page.locator("#ljl_merge_tag_file ul.options li", has_text="example_glow").first.click()
    expect(page.locator("#ljl_merge_tag textarea")).to_have_value("<ljl:example_glow:1>")
    expect(page.locator("#ljl_merge_slider_1")).to_be_hidden()


def test_a_join_measures_its_round_off_when_asked(page, server):
    expect = sync_api.expect
    page.locator("#ljl_merge_measure input").check()
    set_name(page, "browser_measured")
    merge_and_wait(page, "✔ wrote browser_measured.safetensors")
    expect(first(page, "ljl_merge_summary")).to_contain_text("largest relative error")
    page.locator("#ljl_merge_measure input").uncheck()


def test_svd_merge_shows_the_error_plot(page, server):
    _, out_dir = server
    expect = sync_api.expect
    page.locator("#ljl_merge_mode label", has_text="svd").click()
    expect(page.locator("#ljl_merge_measure")).to_be_hidden()  # add and svd are always measured
    rank = page.locator("#ljl_merge_rank input")
    expect(rank).to_have_value("0")  # 0: the largest input rank, as on the command line
    rank.fill("1.5")  # refused as the command line refuses it, not rounded behind the user's back
    set_name(page, "browser_svd")
    merge_and_wait(page, "rank 1.5 must be a positive whole number")
    assert not (out_dir / "browser_svd.safetensors").exists()
    rank.fill("1")
    merge_and_wait(page, "✔ wrote browser_svd.safetensors")
    expect(page.locator("#ljl_merge_plot svg.ljl-error-plot rect.ljl-bar")).to_have_count(64)
    expect(first(page, "ljl_merge_summary")).to_contain_text("svd · rank 1")
    assert load_lora(out_dir / "browser_svd.safetensors").max_rank == 1

    page.click("#ljl_merge_remove_row")  # one LoRA resized: the picked second row is taken away
    expect(page.locator("#ljl_merge_row_1")).to_be_hidden()
    set_name(page, "browser_resized")
    merge_and_wait(page, "✔ wrote browser_resized.safetensors")
    provenance = json.loads(load_lora(out_dir / "browser_resized.safetensors").metadata["ljl_provenance"])
    assert [os.path.basename(i["file"]) for i in provenance["inputs"]] == ["example_ink.safetensors"]
    page.click("#ljl_merge_add_row")
    expect(page.locator("#ljl_merge_input_1 input")).to_have_value("")  # back empty
    pick(page, 1, "example_pastel")
    expect(first(page, "ljl_merge_info_1")).to_contain_text("SD1 · rank 2")


def test_a_bad_name_is_refused_in_the_status_line(page, server):
    _, out_dir = server
    before = sorted(p.name for p in out_dir.iterdir())
    set_name(page, "../escape")
    merge_and_wait(page, "path separator")
    set_name(page, "browser_mix")
    merge_and_wait(page, "already exists")
    assert sorted(p.name for p in out_dir.iterdir()) == before


def test_names_show_as_typed_not_as_markdown(page, server):
    """A name Markdown would read as bold (`__mix__`) shows as typed in the status and the summary."""
    _, out_dir = server
    set_name(page, "__mix__ #1")
    merge_and_wait(page, "✔ wrote __mix__ #1.safetensors")
    sync_api.expect(first(page, "ljl_merge_summary")).to_contain_text("Saved __mix__ #1.safetensors")
    assert (out_dir / "__mix__ #1.safetensors").is_file()


def choose(pg, elem_id, text, custom=False, wait_s=120):
    """Pick text in a searchable dropdown (or type a custom value and press Enter).  A choice that a
    refresh still under way adds is waited for: an open list does not take new choices, so it is
    opened again until the choice shows."""
    box = pg.locator(f"#{elem_id} input")
    option = pg.locator(f"#{elem_id} ul.options li", has_text=text).first
    deadline = time.monotonic() + wait_s
    while True:
        box.click()
        box.fill(text)
        if custom:
            box.press("Enter")
            return
        try:
            option.click(timeout=1000)
            return
        except sync_api.TimeoutError:
            if time.monotonic() > deadline:
                raise
            pg.locator("#ljl_merge_settings_title").first.click()  # close the list


def type_into(pg, elem_id, text):
    """Type into a text box and leave it (click elsewhere), as a user does."""
    pg.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)
    pg.locator("#ljl_merge_settings_title").first.click()


def test_rows_presets_add_mode_sub_folder_and_a_refused_bake(page, server):
    """The rest of the form, each step answered without a gradio error (see no_error_toasts)."""
    _, out_dir = server
    expect = sync_api.expect
    page.click("#ljl_merge_add_row")
    expect(page.locator("#ljl_merge_row_2")).to_be_visible()
    pick(page, 2, "example_glow")
    expect(first(page, "ljl_merge_info_2")).to_contain_text("SD1")
    page.locator("#ljl_merge_weight_2 input").fill("-2")
    type_into(page, "ljl_merge_lbw_2", "OUTD")
    page.click("#ljl_merge_remove_row")
    expect(page.locator("#ljl_merge_row_2")).to_be_hidden()
    page.click("#ljl_merge_add_row")  # the row comes back empty, not at the removed input's weight and lbw
    expect(page.locator("#ljl_merge_weight_2 input")).to_have_value("1")
    expect(page.locator("#ljl_merge_lbw_2 textarea, #ljl_merge_lbw_2 input").first).to_have_value("")
    expect(page.locator("#ljl_merge_input_2 input")).to_have_value("")
    page.click("#ljl_merge_remove_row")
    expect(page.locator("#ljl_merge_row_2")).to_be_hidden()

    page.locator("#ljl_merge_mode label", has_text="svd").click()
    page.locator("#ljl_merge_dynamic input").check()
    expect(page.locator("#ljl_merge_energy")).to_be_visible()
    page.locator("#ljl_merge_dynamic input").uncheck()
    page.locator("#ljl_merge_mode label", has_text="add").click()
    expect(page.locator("#ljl_merge_svd_options")).to_be_hidden()
    expect(page.locator("#ljl_merge_measure")).to_be_hidden()

    type_into(page, "ljl_merge_lbw_1", "INS")  # typed, no Enter: what is shown is what is used
    type_into(page, "ljl_merge_subfolder", "browser_sub")
    set_name(page, "browser_add")
    merge_and_wait(page, "✔ wrote browser_sub/browser_add.safetensors")
    expect(page.locator("#ljl_merge_plot svg.ljl-error-plot rect.ljl-bar")).to_have_count(64)
    added = load_lora(out_dir / "browser_sub" / "browser_add.safetensors")
    provenance = json.loads(added.metadata["ljl_provenance"])
    assert provenance["mode"] == "add" and [i["lbw"] for i in provenance["inputs"]] == [None, "INS"]

    page.click("#ljl_merge_refresh")
    choose(page, "ljl_merge_tag_file", "browser_mix")
    expect(page.locator("#ljl_merge_slider_1")).to_be_visible()
    page.locator("#ljl_merge_advanced_box").click()
    page.locator("#ljl_merge_advanced textarea").fill("0")
    page.locator("#ljl_merge_bake_name textarea").fill("browser_nothing")
    page.click("#ljl_merge_bake")
    expect(first(page, "ljl_merge_bake_status")).to_contain_text("switches every rank off")
    assert not (out_dir / "browser_nothing.safetensors").exists()


def test_the_tag_keeps_its_lbw_through_a_merge_and_bad_files_clear_the_builder(page, server):
    """A merge builds the new file's tag with the lbw already set for the tag; a file the tag builder
    cannot open (corrupt, or a name a tag cannot hold) is reported, and the builder no longer acts on
    the file before it."""
    _, out_dir = server
    expect = sync_api.expect
    page.locator("#ljl_merge_mode label", has_text="concat").click()
    type_into(page, "ljl_merge_lbw_1", "")
    type_into(page, "ljl_merge_subfolder", "")
    type_into(page, "ljl_merge_tag_lbw", "OUTS")
    set_name(page, "browser_lbw_tag")
    merge_and_wait(page, "✔ wrote browser_lbw_tag.safetensors")
    expect(page.locator("#ljl_merge_tag textarea")).to_have_value("<ljl:browser_lbw_tag:1,1:lbw=OUTS>")

    (out_dir / "browser_broken.safetensors").write_bytes(b"not a safetensors file")
    shutil.copyfile(EXAMPLES_DIR / "example_ink.safetensors", out_dir / "odd:name.safetensors")
    page.click("#ljl_merge_refresh")
    for label, words in (("browser_broken", "browser_broken"), ("odd:name", "odd:name")):
        choose(page, "ljl_merge_tag_file", label)
        expect(first(page, "ljl_merge_tag_message")).to_contain_text(words)
        expect(page.locator("#ljl_merge_tag textarea")).to_have_value("")
        expect(page.locator("#ljl_merge_slider_0")).to_be_hidden()
    page.locator("#ljl_merge_bake_name textarea").fill("browser_from_nothing")
    page.click("#ljl_merge_bake")
    expect(first(page, "ljl_merge_bake_status")).to_contain_text("merge first")
    assert not (out_dir / "browser_from_nothing.safetensors").exists()
    (out_dir / "browser_broken.safetensors").unlink()
    (out_dir / "odd:name.safetensors").unlink()
    page.click("#ljl_merge_refresh")


WEBUI_PAGE = """<html><body>
<div id="txt2img_prompt"><label><textarea></textarea></label></div>
<div id="img2img_prompt"><label><textarea></textarea></label></div>
<button id="txt2img_lora_extra_refresh" onclick="window.refreshed.push('txt2img')"></button>
<script>
  window.updated = []; window.switched = []; window.refreshed = [];
  function gradioApp() { return document; }
  function updateInput(target) { window.updated.push(target.parentElement.parentElement.id); }
  function switch_to_txt2img() { window.switched.push('txt2img'); }
  function switch_to_img2img() { window.switched.push('img2img'); }
</script></body></html>"""


def test_prompt_javascript_sends_and_replaces_tags(browser):
    """javascript/ljl_merge.js on a page with the WebUI's prompt ids and helper functions."""
    pg = browser.new_page()
    pg.set_content(WEBUI_PAGE)
    pg.add_script_tag(path=str(ROOT / "javascript" / "ljl_merge.js"))

    def send(tab, tag):
        pg.evaluate("([tab, tag]) => ljlMergeSendTag(tab, tag)", [tab, tag])
        return pg.input_value(f"#{tab}_prompt textarea")

    assert send("txt2img", "<ljl:mix:1,0>") == "<ljl:mix:1,0>"
    pg.fill("#txt2img_prompt textarea", "a cat <ljl:mix:1,1:lbw=ALL>, <ljl:other:1>")
    assert send("txt2img", "<ljl:mix:0.5,1>") == "a cat <ljl:mix:0.5,1>, <ljl:other:1>"
    pg.fill("#img2img_prompt textarea", "a dog  ")
    assert send("img2img", "<ljl:m.v2:1>") == "a dog <ljl:m.v2:1>"
    pg.evaluate("() => { window.opts = {extra_networks_add_text_separator: ', '}; }")
    pg.fill("#img2img_prompt textarea", "a dog <ljl:mxv2:1>")
    assert send("img2img", "<ljl:m.v2:1>") == "a dog <ljl:mxv2:1>, <ljl:m.v2:1>"  # '.' is not a wildcard
    assert send("img2img", "") == "a dog <ljl:mxv2:1>, <ljl:m.v2:1>"  # nothing to send: unchanged
    assert pg.evaluate("() => window.updated") == ["txt2img_prompt", "txt2img_prompt", "img2img_prompt",
                                                   "img2img_prompt"]
    assert pg.evaluate("() => window.switched") == ["txt2img", "txt2img", "img2img", "img2img"]
    pg.evaluate("() => ljlMergeRefreshCards()")
    assert pg.evaluate("() => window.refreshed") == ["txt2img"]  # img2img's button is absent here: skipped
    pg.close()
