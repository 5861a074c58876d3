"""The tab's events (callbacks.py), the tag builder and the report plot, with real files."""
import math
import re
import xml.etree.ElementTree as ET

import pytest
import torch

from lora_factory import make_lora
from lora_merge_ext.layout import Component, JoinLayout
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.ljl_tag import find_tags
from lora_merge_ext.merge_report import ReportRow
from lora_merge_ext.sigma import parse_sigma
from lora_merge_ext.ui import callbacks
from lora_merge_ext.ui.handlers import MergeRequest, MergeService
from lora_merge_ext.ui.library import LoraLibrary
from lora_merge_ext.ui.report_plot import error_plot_svg, part_of
from lora_merge_ext.ui.tag_builder import build_tag, per_rank_vector, sigma_text, tag_name


def shown(markdown: str) -> str:
    """What a Markdown status line shows: backslash escapes and HTML entities read."""
    import html
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))

SMALL = lambda name: "down_blocks_0_attentions" in name and "attn2_to_k" in name  # noqa: E731


@pytest.fixture
def service(tmp_path):
    make_lora(tmp_path / "style.safetensors", rank=2, seed=1, keep=SMALL)
    make_lora(tmp_path / "face.safetensors", rank=4, seed=2, keep=SMALL)
    make_lora(tmp_path / "xl.safetensors", spec="sdxl_lora", rank=2, seed=3,
              keep=lambda n: "input_blocks_4_1_transformer_blocks_0_attn2_to_k" in n)
    s = MergeService(LoraLibrary.of(tmp_path))
    s.refresh()
    return s


LAYOUT = JoinLayout([Component("style", 2), Component("face", 4)])


def test_tag_from_sliders_is_per_component_and_reads_back():
    tag = build_tag("mix", LAYOUT, [1.0, 0.25])
    assert tag == "<ljl:mix:1,0.25>"
    (parsed,) = find_tags(f"a photo, {tag}")
    assert parsed.name == "mix"
    assert parse_sigma(parsed.vector, LAYOUT) == [1.0, 1.0, 0.25, 0.25, 0.25, 0.25]


def test_advanced_vector_wins_over_sliders_and_lbw_is_appended():
    tag = build_tag("mix", LAYOUT, [1.0, 1.0], advanced="1,0,1*2,0*2", lbw="ALL")
    assert tag == "<ljl:mix:1,0,1*2,0*2:lbw=ALL>"
    assert per_rank_vector(LAYOUT, [0.5, 2]) == [0.5, 0.5, 2, 2, 2, 2]
    assert sigma_text(LAYOUT, [0, 1]) == "0,1"


def test_tag_refuses_what_the_prompt_syntax_cannot_carry():
    with pytest.raises(LoraMergeError, match="cannot contain"):
        build_tag("mix", LAYOUT, [1, 1], lbw="a:b")
    with pytest.raises(LoraMergeError, match="expected 1, 2"):
        build_tag("mix", LAYOUT, [1, 1], advanced="1,2,3")
    assert tag_name("/x/sub/mix.v2.safetensors") == "mix.v2"


def test_merge_view_shows_file_components_sliders_and_tag(service):
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined"))
    assert view.ok and view.status == "✔ wrote joined.safetensors"
    assert "`joined.safetensors`" in view.summary and "rank 6" in view.summary
    assert re.search(r"sha256 `[0-9a-f]{64}`", view.summary)
    assert "| 1 | style | 2 |" in view.components and "| 2 | face | 4 |" in view.components
    assert view.plot == ""  # an exact join has no error to plot
    shown = [s for s in view.sliders if s.visible]
    assert [s.label for s in shown] == ["style (rank 2)", "face (rank 4)"]
    assert len(view.sliders) == callbacks.MAX_SLIDERS
    assert view.tag == "<ljl:joined:1,1>" and view.bake_name == "joined_baked"
    assert "joined.safetensors" in view.choices
    tag, message = callbacks.tag(view.state, [1.0, 0.0, 1.0], "", "")
    assert (tag, message) == ("<ljl:joined:1,0>", "")
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="j2"),
                           tag_lbw="OUTS")  # the lbw already set for the tag
    assert (view.tag, view.tag_message) == ("<ljl:j2:1,1:lbw=OUTS>", "")
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="j3"),
                           tag_lbw="a:b")
    assert view.ok and view.tag == "" and "a:b" in view.tag_message


def test_svd_view_plots_one_bar_per_module(service):
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="low",
                                                 mode="svd", rank=1))
    assert view.ok and "Relative error" in view.summary
    svg = re.search(r"<svg.*</svg>", view.plot, re.S).group(0)
    root = ET.fromstring(svg)
    bars = [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "ljl-bar"]
    assert len(bars) == 2


def test_refusals_become_the_status_line(service):
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="../x"))
    assert not view.ok and view.status.startswith("⚠") and "path separator" in view.status
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "xl.safetensors"], name="x"))
    assert not view.ok and "cannot merge SD1 and SDXL" in view.status
    assert callbacks.tag({}, [1], "", "") == ("", "")
    view = callbacks.bake(service, {}, [1], "", "", "b", "", False, "fp16")
    assert not view.ok and "merge first" in view.status


def test_an_unexpected_failure_becomes_the_status_line_too(service, tmp_path, capsys):
    """Out of memory or a failing host hook: the user reads what happened instead of gradio's bare "Error"."""
    def serialize(fn):
        def run():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run

    failing = MergeService(service.library, serialize=serialize)
    view = callbacks.merge(failing, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="m"))
    assert not view.ok
    assert view.status == ("⚠ the merge failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB "
                           "(details in the console)")
    assert "Traceback" in capsys.readouterr().err
    state = callbacks.open_for_tag(service, "face.safetensors").state
    view = callbacks.bake(failing, state, [1.0], "", "", "b", "", False, "fp16")
    assert not view.ok and view.status.startswith("⚠ saving with Σ failed: RuntimeError: CUDA out of memory")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "b.safetensors").exists()


def test_picking_inputs_shows_family_rank_alpha_and_warns_on_mixing(service):
    lines, warning = callbacks.describe_inputs(service, ["style.safetensors", None, "face.safetensors"])
    assert lines[0].startswith("**SD1**") and "rank 2" in lines[0] and "alpha 1" in lines[0]
    assert lines[1] == "" and "rank 4" in lines[2] and "alpha 2" in lines[2]
    assert warning == ""
    lines, warning = callbacks.describe_inputs(service, ["style.safetensors", "xl.safetensors"])
    assert "**SDXL**" in lines[1]
    assert "cannot merge SD1 and SDXL" in warning


def test_bake_view_writes_a_plain_lora(service):
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined"))
    baked = callbacks.bake(service, view.state, [0.0, 1.0], "", "", "face_only", "", False, "fp16")
    assert baked.ok and shown(baked.status) == "✔ wrote face_only.safetensors (Σ = 0,1)"
    assert "face_only.safetensors" in baked.choices
    assert service.describe("face_only.safetensors").ranks == (4,)


def test_a_listed_file_link_to_a_file_elsewhere_bakes_like_any_listed_file(service, tmp_path):
    """The tab lists and merges a link whose file lies outside the Lora folders; the bake takes it too."""
    elsewhere = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    elsewhere.mkdir()
    joined = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="j"))
    (tmp_path / "j.safetensors").rename(elsewhere / "shared.safetensors")
    (tmp_path / "fav.safetensors").symlink_to(elsewhere / "shared.safetensors")
    service.refresh()
    opened = callbacks.open_for_tag(service, "fav.safetensors")
    assert opened.ok, opened.status
    baked = callbacks.bake(service, opened.state, [0.0, 1.0], "", "", "fav_face", None, False, "fp16")
    assert baked.ok and shown(baked.status) == "✔ wrote fav_face.safetensors (Σ = 0,1)", baked.status
    assert service.describe("fav_face.safetensors").ranks == (4,) and joined.ok


def test_refresh_returns_choices_and_subfolders(service, tmp_path):
    (tmp_path / "more").mkdir()
    choices, subs = callbacks.refresh(service)
    assert choices == ["face.safetensors", "style.safetensors", "xl.safetensors"]
    assert subs == ["", "more"]


def test_error_plot_is_valid_svg_with_a_bar_per_module_and_height_by_error():
    rows = [ReportRow("lora_te_text_model_encoder_layers_0_mlp_fc1", 4, 0.1),
            ReportRow("lora_unet_down_blocks_0_attentions_0_proj_in", 4, 0.4),
            ReportRow("lora_unet_mid_block_attentions_0_proj_out", 4, 0.2),
            ReportRow("lora_unet_up_blocks_1_attentions_0_proj_in", 4, math.inf)]
    root = ET.fromstring(error_plot_svg(rows))
    bars = [el for el in root.iter("{http://www.w3.org/2000/svg}rect") if el.get("class") == "ljl-bar"]
    assert len(bars) == 4
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] == pytest.approx(4 * heights[0], rel=1e-3) and heights[2] == pytest.approx(2 * heights[0], rel=1e-3)
    titles = [b.find("{http://www.w3.org/2000/svg}title").text for b in bars]
    assert titles[1].startswith("lora_unet_down_blocks_0_attentions_0_proj_in") and "error 0.4" in titles[1]
    assert bars[3].get("fill") == "#d62828"  # a non-finite error is drawn full height, in red
    assert [part_of(r.module) for r in rows] == ["text encoder", "UNet down", "UNet mid", "UNet up"]
    assert part_of("lora_unet_input_blocks_4_1_proj_in") == "UNet down"
    assert "no modules" in error_plot_svg([])
    ET.fromstring(error_plot_svg([ReportRow("<&>", 1, 0.0)]))  # names are escaped


def test_any_file_of_the_folders_can_feed_the_tag_builder(service):
    callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined"))
    view = callbacks.open_for_tag(service, "joined.safetensors")
    assert view.ok and view.tag == "<ljl:joined:1,1>"
    assert [s.label for s in view.sliders if s.visible] == ["style (rank 2)", "face (rank 4)"]
    assert callbacks.tag(view.state, [0.5, 1], "", "ALL") == ("<ljl:joined:0.5,1:lbw=ALL>", "")
    plain = callbacks.open_for_tag(service, "face.safetensors")
    assert plain.ok and plain.tag == "<ljl:face:1>" and sum(s.visible for s in plain.sliders) == 1
    missing = callbacks.open_for_tag(service, "../nope.safetensors")
    assert not missing.ok and "outside the Lora folders" in missing.status


def test_components_past_the_sliders_are_named_in_the_tag_message(service):
    """A join of 8 joined with a ninth file has 9 components and 8 sliders: the tag builder says the
    ninth stays at 1 and where to change it, instead of fixing it silently."""
    import shutil
    for i in range(1, 10):
        shutil.copy(service.library.path_of("style.safetensors"), service.library.output_dir / f"c{i}.safetensors")
    callbacks.merge(service, MergeRequest(inputs=[f"c{i}.safetensors" for i in range(1, 9)], name="eight"))
    view = callbacks.merge(service, MergeRequest(inputs=["eight.safetensors", "c9.safetensors"], name="nine"))
    assert view.ok and sum(s.visible for s in view.sliders) == callbacks.MAX_SLIDERS == 8
    assert view.tag == "<ljl:nine:1,1,1,1,1,1,1,1,1>"
    assert view.tag_message.startswith("ℹ components 9–9 (c9) have no slider and stay at 1")
    text, message = callbacks.tag(view.state, [0] * 8)
    assert text == "<ljl:nine:0,0,0,0,0,0,0,0,1>" and "advanced Σ field" in message
    assert callbacks.tag(view.state, [0] * 8, "c9=0.5") == ("<ljl:nine:0,0,0,0,0,0,0,0,0.5>", "")  # unnamed: 0


def test_a_join_resized_by_another_tool_merges_whole_and_is_refused_by_the_tag_builder(service, tmp_path):
    """A joined file whose ljl_layout no longer fits its tensors (cut to rank 4 of 6 elsewhere): the
    tab shows why, merges it as one component, as the command line does, and offers no Σ for it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from delta_oracle import dense_deltas
    callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined",
                                          dtype="fp32"))
    with safe_open(str(tmp_path / "joined.safetensors"), "pt") as f:
        metadata = f.metadata()
    cut = {k: (v[:4] if k.endswith("lora_down.weight") else v[:, :4] if k.endswith("lora_up.weight") else v)
           for k, v in load_file(str(tmp_path / "joined.safetensors")).items()}
    save_file({k: v.contiguous() for k, v in cut.items()}, str(tmp_path / "resized.safetensors"), metadata=metadata)
    service.refresh()
    line, _ = callbacks.describe_inputs(service, ["resized.safetensors", "style.safetensors"])
    assert "join layout unusable" in line[0] and "has rank 6, the file has 4" in line[0]
    view = callbacks.merge(service, MergeRequest(inputs=["resized.safetensors", "style.safetensors"],
                                                 weights=[1.0, -0.5], name="again", dtype="fp32"))
    assert view.ok, view.status
    assert [s.label for s in view.sliders if s.visible] == ["resized (rank 4)", "style (rank 2)"]
    resized, style = dense_deltas(tmp_path / "resized.safetensors"), dense_deltas(tmp_path / "style.safetensors")
    merged = dense_deltas(tmp_path / "again.safetensors")
    assert merged.keys() == resized.keys()
    for name in merged:
        torch.testing.assert_close(merged[name], resized[name] - 0.5 * style[name], rtol=1e-6, atol=1e-7)
    refused = callbacks.open_for_tag(service, "resized.safetensors")
    assert not refused.ok and "<ljl> cannot use this file" in shown(refused.status) and "has rank 6" in refused.status


def test_the_tag_builder_refuses_an_lbw_the_tag_would_be_skipped_for(service):
    """An unknown preset or a count that does not fit the file's family would only be found at
    generation time (the tag skipped); the builder says so at once, as the bake does."""
    sd1 = callbacks.open_for_tag(service, "style.safetensors").state
    xl = callbacks.open_for_tag(service, "xl.safetensors").state
    text, message = callbacks.tag(sd1, [1], "", "NOPE")
    assert text == "" and "unknown lbw preset 'NOPE'" in message
    text, message = callbacks.tag(xl, [1], "", ",".join(["1"] * 17))
    assert text == "" and "SDXL needs 12 or 20" in message
    assert callbacks.tag(xl, [1], "", ",".join(["1"] * 12)) == ("<ljl:xl:1:lbw=" + ",".join(["1"] * 12) + ">", "")
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="j3"),
                           tag_lbw="NOPE")
    assert view.ok and view.tag == "" and "unknown lbw preset 'NOPE'" in view.tag_message


def test_a_cleared_slider_box_is_refused_by_tag_and_bake_alike(service):
    view = callbacks.merge(service, MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined"))
    # gradio gives None for a number box the user emptied: neither a stale tag nor a bake at another Σ
    text, message = callbacks.tag(view.state, [1.0, None])
    assert text == "" and "component 2 (face) is empty" in message
    baked = callbacks.bake(service, view.state, [1.0, None], "", "", "cleared", "", False, "fp16")
    assert not baked.ok and "component 2 (face) is empty" in baked.status
    assert "cleared.safetensors" not in service.refresh()
    with pytest.raises(LoraMergeError, match=r"component 1 \(style\) 'x' is not a number"):
        per_rank_vector(LAYOUT, ["x", 1])
    with pytest.raises(LoraMergeError, match="not a finite number"):
        per_rank_vector(LAYOUT, [1, math.inf])


def test_the_tab_bakes_beside_the_source_file(service, tmp_path):
    sub = MergeRequest(inputs=["style.safetensors", "face.safetensors"], name="joined", subfolder="mixes")
    view = callbacks.merge(service, sub)
    assert view.ok and (tmp_path / "mixes" / "joined.safetensors").is_file()
    baked = callbacks.bake(service, view.state, [1.0, 0.0], "", "", "style_part", None, False, "fp16")
    assert baked.ok and (tmp_path / "mixes" / "style_part.safetensors").is_file()
    root_file = callbacks.open_for_tag(service, "style.safetensors")
    baked = callbacks.bake(service, root_file.state, [0.5], "", "", "style_half", None, False, "fp16")
    assert baked.ok and (tmp_path / "style_half.safetensors").is_file()
    assert service.subfolder_of(tmp_path / "a" / "b" / "deep.safetensors") == ""
    assert service.subfolder_of(tmp_path.parent / "elsewhere.safetensors") == ""


def test_names_and_values_from_files_and_users_are_not_read_as_markup():
    """Status, summary, components and info lines are Markdown: a name like `__init__`, a Σ such as
    `1*4,0*4` or a component named `<b>x</b>` must show as typed (the browser test renders them)."""
    from lora_merge_ext.ui.markdown_text import code, literal
    for text in ("__init__", "1*4,0*4", "<b>x</b> & more", "a|b", "[x](http://y)", "~~s~~", "back\\slash", "`t`"):
        assert shown(literal(text)) == text
        assert "<" not in literal(text) and not re.search(r"(?<!\\)[*_`|\[\]~]", literal(text))
    assert code("`t`") == "`` `t` ``" and code("a``b") == "```a``b```"
    assert code("plain.safetensors") == "`plain.safetensors`"
