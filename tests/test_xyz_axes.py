"""X/Y/Z plot axes over Σ vectors, component weights and lbw (issue 5), driven through the WebUI
test double with the X/Y/Z plot double (tests/host_double/xyz_grid.py) loaded as a root script."""
import os
import re

import pytest

from lora_merge_ext.errors import LoraMergeError
from host_double.api_codec import decode_images
from host_double.fixtures import (assert_differs, assert_identical, host_factory, outputs,  # noqa: F401
                                  sd1_loras, sdxl_loras)

XYZ_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "host_double", "xyz_grid.py")
SIGMA, COMPONENT, LBW = "LJL Σ vector", "LJL component weight", "LJL lbw"
SEED = 7
LBW17 = "1,1,1,1,1,1,1,0,0,0,0,0,1,1,1,1,1"


@pytest.fixture
def sd1(host_factory, sd1_loras):
    return host_factory("sd1", lora_dir=sd1_loras["J"].parent, root_scripts=(XYZ_PATH,))


def xyz_module():
    from modules import scripts
    found = [e.module for e in scripts.scripts_data if e.script_class.__module__ == "xyz_grid.py"]
    assert len(found) == 1
    return found[0]


def plot_script(img2img=False):
    from modules import scripts
    runner = scripts.scripts_img2img if img2img else scripts.scripts_txt2img
    return next(s for s in runner.selectable_scripts if s.title() == "X/Y/Z plot")


def axis(script, name):
    """Index of the axis whose label starts with `name` in the script's dropdown."""
    labels = [o.label for o in script.current_axis_options]
    found = [i for i, label in enumerate(labels) if label.startswith(name)]
    assert len(found) == 1, labels
    return found[0]


def grid(host, prompt, x=None, y=None, z=None, csv_mode=False, **p_kwargs):
    """Run the plot; each axis is (axis name, text) or (axis name, text, dropdown list)."""
    script = plot_script()
    args = []
    for spec in (x, y, z):
        if spec is None:
            args += [0, "", []]
        else:
            args += [axis(script, spec[0]), spec[1], list(spec[2]) if len(spec) > 2 else []]
    p = host.processing(prompt=prompt, seed=SEED, **p_kwargs)
    return script.run(p, *args, True, False, False, False, False, False, False, 0, csv_mode), p


def single(host, prompt, **kw):
    return outputs(host.txt2img(prompt, seed=SEED, **kw))


@pytest.fixture
def count_runs(monkeypatch):
    """How many times process_images ran (the plot calls it through modules.processing)."""
    from modules import processing
    calls = []
    original = processing.process_images

    def counted(p):
        calls.append(p.prompt)
        return original(p)

    monkeypatch.setattr(processing, "process_images", counted)
    return calls


# --- registration ------------------------------------------------------------------------------

def test_axes_are_added_once_for_each_tab(sd1):
    xyz = xyz_module()
    ljl = [o for o in xyz.axis_options if o.label.startswith("LJL ")]
    assert sorted((o.label.split(" (")[0], type(o).__name__) for o in ljl) == sorted(
        (name, cls) for name in (SIGMA, COMPONENT, LBW) for cls in ("AxisOptionTxt2Img", "AxisOptionImg2Img"))
    for img2img in (False, True):
        script = plot_script(img2img)
        for name in (SIGMA, COMPONENT, LBW):
            assert script.current_axis_options[axis(script, name)].is_img2img is img2img


def test_register_axes_is_idempotent(sd1):
    from lora_merge_ext.webui import xyz_axes
    before = list(xyz_module().axis_options)
    assert xyz_axes.register_axes() == 0
    assert xyz_module().axis_options == before


def test_register_axes_without_the_plot_script_adds_nothing_and_stays_quiet(host_factory, sd1_loras, capsys):
    host_factory("sd1", lora_dir=sd1_loras["J"].parent)  # no xyz_grid.py loaded
    from lora_merge_ext.webui import xyz_axes
    assert xyz_axes.find_xyz_grid() is None
    assert xyz_axes.register_axes() == 0
    assert "could not add" not in capsys.readouterr().err


def test_axes_survive_a_ui_reload_and_exist_before_before_ui(sd1):
    """A UI reload re-executes every script (a fresh xyz_grid module).  In API-only mode the
    scripts' ui() runs before the before_ui callbacks, so the axes must already be there."""
    from modules import extra_networks, script_callbacks, scripts
    old = xyz_module()
    script_callbacks.script_unloaded_callback()
    scripts.load_scripts((XYZ_PATH,))
    fresh = xyz_module()
    assert fresh is not old
    runners = scripts.create_script_runners()  # --nowebui: Api() builds the UI before before_ui
    for runner in runners:
        runner.setup_ui()
    for img2img in (False, True):
        for name in (SIGMA, COMPONENT, LBW):
            axis(plot_script(img2img), name)
    extra_networks.initialize()
    extra_networks.register_default_extra_networks()
    script_callbacks.before_ui_callback()  # registers again: must not duplicate
    labels = [o.label for o in fresh.axis_options if o.label.startswith("LJL ")]
    assert len(labels) == 6 and len(set(labels)) == 3
    res, _ = grid(sd1, "a cat <ljl:J:1,1>", x=(SIGMA, "1,0 | 0,1"))
    assert not res.errors
    assert_identical(outputs(res.cells[1, 0, 0]), single(sd1, "a cat <ljl:J:0,1>"))


def test_api_txt2img_runs_the_axes(sd1):
    client = sd1.api_client()
    index = axis(plot_script(), SIGMA)
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a cat <ljl:J:1,1>", "seed": SEED, "script_name": "x/y/z plot",
        "script_args": [index, '"1,0", "0,1"', [], 0, "", [], 0, "", [],
                        True, False, False, False, False, False, False, 0, False]})
    assert response.status_code == 200, response.text
    images = decode_images(response.json()["images"])
    assert len(images) == 2
    assert_identical(images[0], single(sd1, "a cat <ljl:J:1,0>"))
    assert_identical(images[1], single(sd1, "a cat <ljl:J:0,1>"))


# --- value parsing and labels ----------------------------------------------------------------

def cell_prompts(res):
    return {k: pc.prompt for k, pc in res.copies.items()}


def test_sigma_values_by_csv_quoting_or_bar(sd1, count_runs):
    quoted, p = grid(sd1, "a cat <ljl:J:1,1>", x=(SIGMA, '"1,0", "0,1", "0.5,1"'))
    barred, _ = grid(sd1, "a cat <ljl:J:1,1>", x=(SIGMA, "1 0 | 0 1 | 0.5 1"))
    assert quoted.xs == ["1,0", "0,1", "0.5,1"] and barred.xs == ["1 0", "0 1", "0.5 1"]
    assert barred.x_labels == ["1 0", "0 1", "0.5 1"]  # labels read as typed
    expected = ["a cat <ljl:J:1,0>", "a cat <ljl:J:0,1>", "a cat <ljl:J:0.5,1>"]
    assert [cell_prompts(quoted)[i, 0, 0] for i in range(3)] == expected
    assert [cell_prompts(barred)[i, 0, 0] for i in range(3)] == expected
    assert p.prompt == "a cat <ljl:J:1,1>"  # the original is untouched
    assert len(count_runs) == 6


def test_unquoted_commas_make_one_value_per_number(sd1):
    res, _ = grid(sd1, "a cat <ljl:J:1,1>", x=(SIGMA, "1,0"))
    assert res.xs == ["1", "0"]
    assert [cell_prompts(res)[i, 0, 0] for i in range(2)] == ["a cat <ljl:J:1>", "a cat <ljl:J:0>"]


def test_component_weight_values_and_ranges(sd1):
    res, _ = grid(sd1, "a cat <ljl:J:1,1>", x=(COMPONENT, "B: 0-1 (5)"))
    assert res.x_labels == ["B: 0", "B: 0.25", "B: 0.5", "B: 0.75", "B: 1"]
    assert [cell_prompts(res)[i, 0, 0] for i in range(5)] == [
        f"a cat <ljl:J:1,{w}>" for w in ("0", "0.25", "0.5", "0.75", "1")]
    res, _ = grid(sd1, "a cat <ljl:J:1*4,0.5*2>", x=(COMPONENT, "1: 0-1 [3]"))
    assert [cell_prompts(res)[i, 0, 0] for i in range(3)] == [
        "a cat <ljl:J:0,0.5>", "a cat <ljl:J:0.5,0.5>", "a cat <ljl:J:1,0.5>"]
    res, _ = grid(sd1, "x <ljl:J:1,0,1,1,1,1>", x=(COMPONENT, "B: -1, 2"))  # per rank, A not uniform
    assert cell_prompts(res)[0, 0, 0] == "x <ljl:J:1,0,1*2,-1*2>"


def test_lbw_dropdown_offers_the_presets_that_fit_the_loaded_model(sd1, tmp_path, monkeypatch):
    from lora_merge_ext import presets
    from modules import shared
    custom = tmp_path / "preset.txt"
    custom.write_text("ONLY1:" + ",".join(["1"] * 17) + "\nONLYXL:" + ",".join(["1"] * 12) + "\n"
                      "BOTH:" + ",".join(["0"] * 26) + "\nBOTH:" + ",".join(["0"] * 20) + "\n")
    monkeypatch.setattr(presets, "DEFAULT_PATH", custom)
    script = plot_script()
    opt = script.current_axis_options[axis(script, LBW)]
    assert opt.choices() == ["ONLY1", "BOTH"]
    monkeypatch.setattr(shared.sd_model, "is_sdxl", True, raising=False)
    assert opt.choices() == ["ONLYXL", "BOTH"]
    monkeypatch.setattr(shared, "sd_model", None)
    assert opt.choices() == ["ONLY1", "ONLYXL", "BOTH"]


def test_lbw_values_from_the_dropdown_or_text(sd1):
    from lora_merge_ext.presets import load_presets, preset_names
    script = plot_script()
    opt = script.current_axis_options[axis(script, LBW)]
    assert opt.choices() == preset_names(load_presets()) and "ALL" in opt.choices()
    res, _ = grid(sd1, "a <ljl:J:1>", x=(LBW, "ignored", ["ALL", "OUTS"]))
    assert [cell_prompts(res)[i, 0, 0] for i in range(2)] == ["a <ljl:J:1:lbw=ALL>", "a <ljl:J:1:lbw=OUTS>"]
    assert res.x_labels == ["ALL", "OUTS"]
    res, _ = grid(sd1, "a <ljl:J:1:lbw=INS>", x=(LBW, f'ALL, "{LBW17}"'), csv_mode=True)
    assert [cell_prompts(res)[i, 0, 0] for i in range(2)] == ["a <ljl:J:1:lbw=ALL>", f"a <ljl:J:1:lbw={LBW17}>"]
    res, _ = grid(sd1, "a <ljl:J:1>", x=(LBW, f"OUTD | {LBW17.replace(',', ' ')}"), csv_mode=True)
    assert cell_prompts(res)[1, 0, 0] == f"a <ljl:J:1:lbw={LBW17}>"


# --- per-cell prompt rewriting --------------------------------------------------------------------

def test_each_cell_rewrites_its_tag_on_all_three_axes(sd1):
    res, p = grid(sd1, "a cat <ljl:J:1,1:te=0.5>, <lora:A:0.2>",
                  x=(SIGMA, "1,0 | 0.5,0.5"), y=(COMPONENT, "B: 0, 1"), z=(LBW, "ALL | OUTS"), csv_mode=True,
                  negative_prompt="ugly <ljl:J:1>")
    prompts = cell_prompts(res)
    assert len(prompts) == 8
    assert prompts[0, 0, 0] == "a cat <ljl:J:1,0:te=0.5:lbw=ALL>, <lora:A:0.2>"
    assert prompts[1, 1, 1] == "a cat <ljl:J:0.5,1:te=0.5:lbw=OUTS>, <lora:A:0.2>"
    assert all(pc.negative_prompt == "ugly <ljl:J:1>" for pc in res.copies.values())
    assert p.prompt == "a cat <ljl:J:1,1:te=0.5>, <lora:A:0.2>"


def test_a_name_prefix_picks_the_tag(sd1):
    prompt = "a <ljl:J:1,1> b <ljl:K:1,1>"
    res, _ = grid(sd1, prompt, x=(SIGMA, "K: 0,1 | J: 0.5"), y=(COMPONENT, "K:C: 0.25"),
                  z=(LBW, "K: OUTS"), csv_mode=True)
    assert cell_prompts(res)[0, 0, 0] == "a <ljl:J:1,1> b <ljl:K:0,0.25:lbw=OUTS>"
    assert cell_prompts(res)[1, 0, 0] == "a <ljl:J:0.5> b <ljl:K:1,0.25:lbw=OUTS>"
    assert res.x_labels == ["K: 0,1", "J: 0.5"] and res.y_labels == ["K:C: 0.25"]


def test_the_hires_prompt_is_rewritten_when_it_has_the_tag(sd1):
    res, _ = grid(sd1, "a <ljl:J:1,1>", x=(SIGMA, '"0,1"'), enable_hr=True, hr_prompt="b <ljl:J:1,1>")
    pc = res.copies[0, 0, 0]
    assert (pc.prompt, pc.hr_prompt) == ("a <ljl:J:0,1>", "b <ljl:J:0,1>")
    assert_identical(outputs(res.cells[0, 0, 0]),
                     single(sd1, "a <ljl:J:0,1>", enable_hr=True, hr_prompt="b <ljl:J:0,1>"))


def test_a_hires_prompt_with_other_loras_first_gets_the_prompt_s_tag_rewritten(sd1):
    """The value names no tag: the prompt's first tag (J) is varied, in the hires prompt too, even
    where that lists K first; K keeps its own vector."""
    res, _ = grid(sd1, "a <ljl:J:1,1>", x=(SIGMA, '"0,1"'), enable_hr=True, hr_prompt="b <ljl:K:1> <ljl:J:1,1>")
    pc = res.copies[0, 0, 0]
    assert (pc.prompt, pc.hr_prompt) == ("a <ljl:J:0,1>", "b <ljl:K:1> <ljl:J:0,1>")
    res, _ = grid(sd1, "a <ljl:J:1,1>", x=(COMPONENT, "B: 0"), enable_hr=True, hr_prompt="b <ljl:K:1>")
    assert res.copies[0, 0, 0].hr_prompt == "b <ljl:K:1>"


def test_prompt_lists_and_hires_prompt_lists_are_rewritten(sd1):
    """API requests may carry one prompt per image; every prompt holding the tag is rewritten."""
    from types import SimpleNamespace
    from lora_merge_ext.webui.xyz_axes import apply_lbw, apply_sigma, finish_edits
    p = SimpleNamespace(prompt=["a <ljl:J:1>", "b", "c <ljl:J:1> <ljl:K:1>"], hr_prompt=["h <ljl:K:1>", "i"])
    apply_sigma(p, "K: 0 1", [])
    apply_lbw(p, "ALL", [])  # no NAME: the first tag of the prompt, J, wherever it is
    assert p.prompt[0] == "a <ljl:J:1>"  # queued until the cell's prompt is final
    assert finish_edits(p) == []
    assert p.prompt == ["a <ljl:J:1:lbw=ALL>", "b", "c <ljl:J:1:lbw=ALL> <ljl:K:0,1>"]
    assert p.hr_prompt == ["h <ljl:K:0,1>", "i"]
    assert finish_edits(p) == []  # applied once
    p = SimpleNamespace(prompt=["a", "b"])
    apply_sigma(p, "1", [])
    (problem,) = finish_edits(p)
    assert problem.startswith("LJL Σ vector value '1': the prompt 'a' has no <ljl:NAME:…> tag")
    assert problem.endswith("this image is made without it")


def test_a_cell_whose_prompt_lost_its_tag_quotes_that_prompt():
    """A Prompt S/R that turns the <ljl> tag into a <lora> tag: the message shows the cell's prompt."""
    from types import SimpleNamespace
    from lora_merge_ext.webui.xyz_axes import apply_sigma, finish_edits
    p = SimpleNamespace(prompt="a cat <lora:J:1>")
    apply_sigma(p, "1,0", [])
    (problem,) = finish_edits(p)
    assert problem.startswith("LJL Σ vector value '1,0': the prompt 'a cat <lora:J:1>' has no <ljl:NAME:…> tag")


def test_register_axes_outside_the_webui_is_a_quiet_no_op(capsys):
    import importlib
    from lora_merge_ext.webui import xyz_axes
    with pytest.raises(ImportError):
        importlib.import_module("modules")
    assert xyz_axes.find_xyz_grid() is None and xyz_axes.register_axes() == 0
    assert capsys.readouterr() == ("", "")


# --- errors before the grid starts ----------------------------------------------------------------

CONFIRM_CASES = [
    ("a cat", (SIGMA, "1,0 | 0,1"), "LJL Σ vector: the prompt 'a cat' has no <ljl:NAME:…> tag"),
    ("a <lora:J:1>", (LBW, "ALL"), "LJL lbw: the prompt '.*' has no <ljl:NAME:…> tag"),
    ("a <ljl:J:1>", (SIGMA, "1,0 | 1,0,1"),
     r"LJL Σ vector value '1,0,1': Σ vector '1,0,1' has 3 values; expected 1, 2 \(one per component\) "
     r"or 6 \(one per rank\)"),
    ("a <ljl:A:1>", (SIGMA, '"1,1"'), r"has 2 values; expected 1 or 4 \(one per rank\)"),
    ("a <ljl:J:1>", (SIGMA, "K: 1,0 | 1"), r"LJL Σ vector value 'K: 1,0': the prompt has no <ljl:K:…> tag"),
    ("a <ljl:Nope:1>", (SIGMA, "1"), "LJL Σ vector: no LoRA named 'Nope' in the Lora folders"),
    ("a <ljl:J:1>", (SIGMA, "J: 1:0"), "cannot contain ':'"),
    ("a <ljl:J:1>", (COMPONENT, "C: 0, 1"), r"unknown component 'C'; components are 1=A, 2=B"),
    ("a <ljl:J:1>", (COMPONENT, "3: 1"), "unknown component '3'"),
    ("a <ljl:J:1>", (COMPONENT, "0, 1"), "LJL component weight: .*does not say which component"),
    ("a <ljl:J:1,0,1>", (COMPONENT, "A: 1"), "Σ vector '1,0,1' has 3 values"),
    ("a <ljl:J:1>", (LBW, "ALL | NOPE"), "LJL lbw value 'NOPE': unknown lbw preset 'NOPE'"),
    ("a <ljl:J:1>", (LBW, '"1,0,1"'), r"LJL lbw value '1,0,1': lbw '1,0,1' has 3 values; SD1(/SD2)? needs 17 or 26"),
    ("a <ljl:J:1>", (LBW, "x", ["ALL", "MISSING"]), "unknown lbw preset 'MISSING'"),
    ("a <ljl:J:1>", (SIGMA, " | "), "LJL Σ vector: no values"),
    ("a <ljl:J:1>", (LBW, "x", []), "LJL lbw: no values"),
]


def test_confirm_fails_before_any_cell_runs(sd1, count_runs):
    for prompt, x, message in CONFIRM_CASES:  # one host for all cases: starting one takes seconds
        try:
            grid(sd1, prompt, x=x, csv_mode=len(x) == 2)
        except LoraMergeError as exc:
            assert re.search(message, str(exc)), (prompt, x, str(exc))
            assert "\n" not in str(exc)
        else:
            pytest.fail(f"no error for prompt {prompt!r} and axis {x!r}")
        assert count_runs == [], (prompt, x)


def test_an_error_on_a_later_axis_also_stops_the_grid_first(sd1, count_runs):
    with pytest.raises(LoraMergeError, match="unknown lbw preset 'NOPE'"):
        grid(sd1, "a <ljl:J:1>", x=(SIGMA, "1,0 | 0,1"), y=(COMPONENT, "A: 0, 1"), z=(LBW, "NOPE"), csv_mode=True)
    assert count_runs == []


# --- a cell is the same image as a single generation -----------------------------------------------

def test_grid_cells_equal_single_runs(sd1):
    res, _ = grid(sd1, "a cat <ljl:J:1,1>, sunset", x=(SIGMA, "1,0 | 0,1 | 0.5,2"), y=(LBW, f'ALL | "{LBW17}"'),
                  csv_mode=True)
    assert not res.errors and len(res.cells) == 6
    vectors, specs = ["1,0", "0,1", "0.5,2"], ["ALL", LBW17]
    for (ix, iy, iz), processed in res.cells.items():
        expected = single(sd1, f"a cat <ljl:J:{vectors[ix]}:lbw={specs[iy]}>, sunset")
        assert_identical(outputs(processed), expected)
    # cells differ, in the text encoder too: the conds were not reused across Σ values
    first, second = outputs(res.cells[0, 0, 0]), outputs(res.cells[1, 0, 0])
    assert_differs(first, second)
    cond = {k: v for k, v in first.items() if k[0] == "cond"}
    assert_differs(cond, {k: second[k] for k in cond})
    assert_differs(outputs(res.cells[0, 0, 0]), outputs(res.cells[0, 1, 0]))


def test_component_axis_cells_equal_single_runs(sd1):
    res, _ = grid(sd1, "a <ljl:J:1,1> b <ljl:K:0.5>", x=(COMPONENT, "K:B: 0-1 [3]"), y=(SIGMA, "2,0 | 0.5,1"))
    assert not res.errors
    for (ix, iy, _), processed in res.cells.items():
        weight = ["0", "0.5", "1"][ix]
        j = ["2,0", "0.5,1"][iy]
        assert_identical(outputs(processed), single(sd1, f"a <ljl:J:{j}> b <ljl:K:{weight},0.5>"))


@pytest.mark.parametrize("component_first", [True, False])
def test_a_component_weight_applies_on_top_of_a_sigma_axis_in_either_order(sd1, component_first):
    component, sigma = (COMPONENT, "B: 0, 1"), (SIGMA, "1,1 | 0.5,0.5")
    x, y = (component, sigma) if component_first else (sigma, component)
    res, _ = grid(sd1, "a cat <ljl:J:1,1>", x=x, y=y)
    by_values = {}
    for (ix, iy, _), pc in res.copies.items():
        weight, vector = (ix, iy) if component_first else (iy, ix)
        by_values[weight, vector] = pc.prompt
    assert by_values == {(0, 0): "a cat <ljl:J:1,0>", (1, 0): "a cat <ljl:J:1,1>",
                         (0, 1): "a cat <ljl:J:0.5,0>", (1, 1): "a cat <ljl:J:0.5,1>"}
    cell = (0, 1, 0) if component_first else (1, 0, 0)
    assert_identical(outputs(res.cells[cell]), single(sd1, "a cat <ljl:J:0.5,0>"))


@pytest.mark.parametrize("component_first", [True, False])
def test_a_component_weight_follows_a_prompt_sr_that_renames_the_tag(sd1, component_first):
    """J = join(A, B), K = join(B, C): "B: 0" switches B off in K too, wherever B stands there."""
    component, rename = (COMPONENT, "B: 0"), ("Prompt S/R", "J, K")
    x, y = (component, rename) if component_first else (rename, component)
    res, _ = grid(sd1, "a cat <ljl:J:1,1>", x=x, y=y)
    assert sorted(pc.prompt for pc in res.copies.values()) == ["a cat <ljl:J:1,0>", "a cat <ljl:K:0,1>"]
    cell = (0, 1, 0) if component_first else (1, 0, 0)
    assert_identical(outputs(res.cells[cell]), single(sd1, "a cat <ljl:K:0,1>"))


def test_a_component_the_renamed_file_lacks_is_reported_and_the_grid_goes_on(sd1):
    res, _ = grid(sd1, "a <ljl:J:1>", x=(COMPONENT, "B: 0"), y=("Prompt S/R", "J, A"))
    assert len(res.cells) == 2 and res.copies[0, 1, 0].prompt == "a <ljl:A:1>"
    comments = res.cells[0, 1, 0].comments
    assert "LJL component weight value 'B: 0'" in comments and "made without it" in comments
    assert_identical(outputs(res.cells[0, 1, 0]), single(sd1, "a <ljl:A:1>"))
    assert res.copies[0, 0, 0].prompt == "a <ljl:J:1,0>"


def test_a_sigma_the_renamed_file_cannot_take_is_reported_and_the_tag_kept(sd1):
    """Prompt S/R swaps J (two components) for A (one, rank 4): "1,0" fits neither; the cell keeps
    <ljl:A:1> and says so, as for a component the file lacks, instead of dropping the LoRA."""
    res, _ = grid(sd1, "a <ljl:J:1>", x=(SIGMA, "1,0 | 0,1"), y=("Prompt S/R", "J, A"))
    assert not res.errors and res.copies[0, 1, 0].prompt == "a <ljl:A:1>"
    comments = res.cells[0, 1, 0].comments
    assert "LJL Σ vector value '1,0'" in comments and "made without it" in comments
    assert_identical(outputs(res.cells[0, 1, 0]), single(sd1, "a <ljl:A:1>"))
    assert_identical(outputs(res.cells[1, 0, 0]), single(sd1, "a <ljl:J:0,1>"))


def test_cells_share_the_plots_comments_as_on_the_host(sd1):
    """The host's cells are shallow copies of one p and share its comments: a later cell's info
    still names the value an earlier cell left out (each names its own value)."""
    res, _ = grid(sd1, "a <ljl:J:1>", x=(COMPONENT, "B: 0"), y=("Prompt S/R", "J, A, J"))
    assert "made without it" not in res.cells[0, 0, 0].comments
    assert "LJL component weight value 'B: 0'" in res.cells[0, 1, 0].comments
    assert "LJL component weight value 'B: 0'" in res.cells[0, 2, 0].comments
    assert_identical(outputs(res.cells[0, 2, 0]), single(sd1, "a <ljl:J:1,0>"))


@pytest.fixture
def sdxl(host_factory, sdxl_loras):
    return host_factory("sdxl", lora_dir=sdxl_loras["J"].parent, root_scripts=(XYZ_PATH,))


def test_sdxl_lbw_is_checked_against_the_file_family(sdxl, count_runs):
    host = sdxl
    with pytest.raises(LoraMergeError, match="SDXL needs 12 or 20"):
        grid(host, "a <ljl:J:1>", x=(LBW, f'"{LBW17}"'), csv_mode=True)
    assert count_runs == []
    sdxl12 = "1,0,0,0,0,1,1,1,1,1,1,1"
    res, _ = grid(host, "a <ljl:J:1>", x=(LBW, f"INS | {sdxl12}"), csv_mode=True)
    assert not res.errors
    assert_identical(outputs(res.cells[1, 0, 0]), single(host, f"a <ljl:J:1:lbw={sdxl12}>"))
    assert_differs(outputs(res.cells[0, 0, 0]), outputs(res.cells[1, 0, 0]))


def test_a_listed_lora_that_vanished_is_a_one_line_confirm_error(host_factory, sd1_loras, tmp_path):
    import shutil
    lora_dir = tmp_path / "Lora"
    shutil.copytree(sd1_loras["J"].parent, lora_dir)
    host = host_factory("sd1", lora_dir=lora_dir, root_scripts=(XYZ_PATH,))
    (lora_dir / "K.safetensors").unlink()                    # listed at start, gone now
    with pytest.raises(LoraMergeError, match=r"^LJL Σ vector: .*K\.safetensors: cannot read file") as caught:
        grid(host, "a <ljl:K:1>", x=(SIGMA, "1 | 0"))
    assert "\n" not in str(caught.value)
