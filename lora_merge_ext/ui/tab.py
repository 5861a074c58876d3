"""The "LoRA Merge" tab: gradio layout only (the WebUI and the standalone UI both call build_tab).

Portable between gradio 3.41 (A1111) and gradio 4 (Forge): plain components (no subclasses),
`gr.update(...)` for changes, and `js=`/`_js=` picked from the installed gradio version.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import gradio as gr

from ..shipped_files import shipped_path
from . import callbacks
from .callbacks import MAX_INPUTS, MAX_SLIDERS
from .handlers import DTYPES, MergeRequest, MergeService
from .library import LoraLibrary

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
CSS_PATH = shipped_path("style.css")
MODE_HELP = {
    "concat": "join: exact, ranks add up; parts stay switchable with <ljl:…>",
    "add": "classic factor sum: needs equal ranks, inexact (error shown)",
    "svd": "best approximation at the chosen rank (error shown)",
}


def js_kwargs(code: str) -> dict:
    """The event-listener keyword that runs browser code: `_js` on gradio 3, `js` on gradio 4."""
    return {"js": code} if GRADIO_MAJOR >= 4 else {"_js": code}


def tab_css() -> str:
    try:
        return CSS_PATH.read_text(encoding="utf-8")
    except OSError:
        return ""


def subfolder_info(subfolders) -> str:
    """The line under the sub-folder box: the sub-folders there are (a new name creates one)."""
    existing = [s for s in subfolders if s]
    if not existing:
        return "a new name creates the folder"
    shown = ", ".join(existing[:12]) + (", …" if len(existing) > 12 else "")
    return f"existing: {shown}; a new name creates the folder"


def _presets_names(presets) -> list[str]:
    if presets is None:
        return []
    from ..presets import preset_names
    return preset_names(presets)


def offline_theme():
    """gradio's default look with the system's fonts: the default theme has the browser fetch its
    fonts from Google, and the standalone tab makes no requests outside this machine."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def build_tab(service_or_dirs: MergeService | LoraLibrary | Sequence[str | os.PathLike], *, presets=None,
              serialize: Callable | None = None, on_written: Callable | None = None,
              devices: Sequence[str] | None = None, webui: bool = False, title: str = "LoRA Merge",
              intro: str = "") -> gr.Blocks:
    """Build the merge tab as a gr.Blocks.

    service_or_dirs: a MergeService, a LoraLibrary, or Lora folders (outputs go into the first).
    presets: lbw presets (default: the project's preset.txt); serialize / on_written: host hooks
    (see MergeService); devices: offered devices (default cpu, plus cuda when torch sees a GPU);
    webui: show the send-to-txt2img/img2img buttons and refresh the host's Lora cards after a write;
    intro: a line of markdown above the tab (the standalone UI names its folders there).
    """
    service = _service(service_or_dirs, presets, serialize, on_written)
    if devices is None:
        from ..devices import cuda_available
        devices = ["cpu", "cuda"] if cuda_available() else ["cpu"]
    choices = service.refresh()
    preset_choices = _presets_names(service.presets_or_none())

    with gr.Blocks(analytics_enabled=False, title=title, css=None if webui else tab_css(),
                   theme=None if webui else offline_theme()) as demo:
        if intro:
            gr.Markdown(intro, elem_id="ljl_merge_intro")
        with gr.Row(elem_id="ljl_merge_tab"):
            with gr.Column(scale=3):
                gr.Markdown("### Inputs", elem_id="ljl_merge_inputs_title")
                rows, pickers, weights, lbws, infos = [], [], [], [], []
                for i in range(MAX_INPUTS):
                    with gr.Group(visible=i < 2, elem_id=f"ljl_merge_row_{i}") as row:
                        with gr.Row():
                            pickers.append(gr.Dropdown(choices=choices, value=None, label=f"LoRA {i + 1}",
                                                       elem_id=f"ljl_merge_input_{i}", scale=4))
                            weights.append(gr.Number(value=1.0, label="weight", elem_id=f"ljl_merge_weight_{i}",
                                                     scale=1, min_width=90))
                            # text boxes, not dropdowns with custom values: gradio 3 drops a typed value
                            # unless Enter is pressed, and Enter picks the first choice containing it
                            lbws.append(gr.Textbox(value="", label="lbw (preset or numbers)", placeholder="e.g. MIDD",
                                                   max_lines=1, elem_id=f"ljl_merge_lbw_{i}", scale=2))
                        infos.append(gr.Markdown("", elem_id=f"ljl_merge_info_{i}"))
                    rows.append(row)
                shown = gr.State(2)
                family_warning = gr.Markdown("", elem_id="ljl_merge_family")
                with gr.Row():
                    add_row = gr.Button("+ input", elem_id="ljl_merge_add_row")
                    remove_row = gr.Button("− input", elem_id="ljl_merge_remove_row")
                    refresh = gr.Button("↻ refresh list", elem_id="ljl_merge_refresh")
            with gr.Column(scale=2):
                gr.Markdown("### Merge", elem_id="ljl_merge_settings_title")
                mode = gr.Radio(list(MODE_HELP), value="concat", label="mode", info=MODE_HELP["concat"],
                                elem_id="ljl_merge_mode")
                measure = gr.Checkbox(value=False, label="measure the join's round-off (slower for large files)",
                                      elem_id="ljl_merge_measure")
                with gr.Group(visible=False, elem_id="ljl_merge_svd_options") as svd_options:
                    with gr.Row():
                        rank = gr.Number(value=0, label="rank (0: the largest input rank; "
                                         "the cap, with dynamic rank)", elem_id="ljl_merge_rank")
                        conv_rank = gr.Number(value=0, label="conv rank (0: same as rank)",
                                              elem_id="ljl_merge_conv_rank")
                    dynamic = gr.Checkbox(value=False, label="dynamic rank: keep this fraction of the energy",
                                          elem_id="ljl_merge_dynamic")
                    energy = gr.Slider(0.5, 1.0, value=0.95, step=0.005, label="energy", visible=False,
                                       elem_id="ljl_merge_energy")
                with gr.Row():
                    dtype = gr.Radio(list(DTYPES), value="fp16", label="saved dtype", elem_id="ljl_merge_dtype")
                    device = gr.Radio(list(devices), value=devices[0], label="device", elem_id="ljl_merge_device")
                name = gr.Textbox(label="output name (a file in the Lora folder)", placeholder="my_merge",
                                  elem_id="ljl_merge_name")
                with gr.Row():
                    subfolder = gr.Textbox(value="", label="sub-folder (optional)", max_lines=1,
                                           info=subfolder_info(service.subfolders()), elem_id="ljl_merge_subfolder")
                    overwrite = gr.Checkbox(value=False, label="overwrite an existing file",
                                            elem_id="ljl_merge_overwrite")
                merge_button = gr.Button("Merge", variant="primary", elem_id="ljl_merge_button")
                status = gr.Markdown("", elem_id="ljl_merge_status")

        with gr.Row(elem_id="ljl_merge_result_row"):
            with gr.Column(scale=3):
                gr.Markdown("### Result", elem_id="ljl_merge_result_title")
                summary = gr.Markdown("", elem_id="ljl_merge_summary")
                components = gr.Markdown("", elem_id="ljl_merge_components")
                plot = gr.HTML("", elem_id="ljl_merge_plot")
            with gr.Column(scale=2):
                gr.Markdown("### Tag", elem_id="ljl_merge_tag_title")
                result = gr.State({})
                tag_file = gr.Dropdown(choices=choices, value=None, label="file (the last merge, or any)",
                                       elem_id="ljl_merge_tag_file")
                sliders = [gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label=f"component {i + 1}", visible=False,
                                     elem_id=f"ljl_merge_slider_{i}") for i in range(MAX_SLIDERS)]
                with gr.Accordion("advanced: Σ per rank", open=False, elem_id="ljl_merge_advanced_box"):
                    advanced = gr.Textbox(label="Σ vector (overrides the sliders)", placeholder="1*4,0*4",
                                          elem_id="ljl_merge_advanced")
                tag_lbw = gr.Textbox(value="", label="lbw for the tag", max_lines=1, elem_id="ljl_merge_tag_lbw",
                                     info=f"a preset ({', '.join(preset_choices)}) or numbers" if preset_choices
                                     else "numbers, or a preset of preset.txt")
                tag = gr.Textbox(label="tag", interactive=False, show_copy_button=True, elem_id="ljl_merge_tag")
                tag_message = gr.Markdown("", elem_id="ljl_merge_tag_message")
                with gr.Row(visible=webui):
                    to_txt2img = gr.Button("→ txt2img prompt", elem_id="ljl_merge_to_txt2img")
                    to_img2img = gr.Button("→ img2img prompt", elem_id="ljl_merge_to_img2img")
                with gr.Row():
                    bake_name = gr.Textbox(label="name for the baked file (saved beside the file above, "
                                           "or in the Lora folder)", elem_id="ljl_merge_bake_name", scale=3)
                    bake_overwrite = gr.Checkbox(value=False, label="overwrite an existing file",
                                                 elem_id="ljl_merge_bake_overwrite")
                    bake_button = gr.Button("Save with Σ", elem_id="ljl_merge_bake")
                bake_status = gr.Markdown("", elem_id="ljl_merge_bake_status")
        for box in (overwrite, bake_overwrite):  # the WebUI saves defaults by label: both share one, and a
            box.do_not_save_to_config = True     # saved "overwrite" would replace files unasked

        # --- events ------------------------------------------------------------------------------
        def on_pick(*labels):
            lines, warning = callbacks.describe_inputs(service, labels)
            return [*lines, warning]

        for picker in pickers:
            picker.change(on_pick, inputs=pickers, outputs=[*infos, family_warning])

        def on_rows(count, delta):
            """Show count rows (one is enough for an svd resize); a hidden row is reset (LoRA, weight and
            lbw), so it comes back empty: the way to empty a picked row."""
            count = max(1, min(MAX_INPUTS, int(count) + delta))
            updates = [gr.update(visible=i < count) for i in range(MAX_INPUTS)]

            def reset(value):
                return [gr.update() if i < count else gr.update(value=value) for i in range(MAX_INPUTS)]
            return [count, *updates, *reset(None), *reset(1.0), *reset("")]

        row_outputs = [shown, *rows, *pickers, *weights, *lbws]
        add_row.click(lambda c: on_rows(c, +1), inputs=[shown], outputs=row_outputs)
        remove_row.click(lambda c: on_rows(c, -1), inputs=[shown], outputs=row_outputs)

        def on_refresh():
            labels, subs = callbacks.refresh(service)
            return [*[gr.update(choices=labels) for _ in pickers], gr.update(info=subfolder_info(subs)),
                    gr.update(choices=labels)]

        refresh.click(on_refresh, inputs=[], outputs=[*pickers, subfolder, tag_file])
        demo.load(on_refresh, inputs=None, outputs=[*pickers, subfolder, tag_file])  # a reloaded page: fresh lists

        def mode_views(m):
            return [gr.update(info=MODE_HELP.get(m, "")), gr.update(visible=m == "svd"),
                    gr.update(visible=m == "concat")]

        mode.change(mode_views, inputs=[mode], outputs=[mode, svd_options, measure])
        dynamic.change(lambda d: gr.update(visible=bool(d)), inputs=[dynamic], outputs=[energy])
        # the WebUI restores saved defaults (ui-config.json) into the values after the tab is built:
        # what is shown must follow them, not the defaults the tab was built with
        demo.load(lambda m, d: [*mode_views(m), gr.update(visible=bool(d))], inputs=[mode, dynamic],
                  outputs=[mode, svd_options, measure, energy])

        form = {shown, mode, measure, rank, conv_rank, dynamic, energy, dtype, device, name, subfolder, overwrite,
                tag_lbw, *pickers, *weights, *lbws}
        outputs = [status, summary, components, plot, result, *sliders, advanced, tag, tag_message, bake_name,
                   *pickers, subfolder, tag_file]

        def on_merge(values, progress=gr.Progress()):
            count = int(values[shown])
            req = MergeRequest(
                inputs=[values[p] or "" for p in pickers[:count]],
                weights=[values[w] for w in weights[:count]],
                lbw=[values[b] or "" for b in lbws[:count]],
                mode=values[mode], rank=values[rank] or None, conv_rank=values[conv_rank] or None,
                energy=values[energy] if values[dynamic] else None,
                dtype=values[dtype], device=values[device], name=values[name] or "",
                subfolder=values[subfolder] or "", overwrite=bool(values[overwrite]),
                measure=bool(values[measure]))

            def report(done, total, message):
                progress(done / max(total, 1), desc=f"merging {done}/{total}: {message}")

            view = callbacks.merge(service, req, progress=report, tag_lbw=values[tag_lbw] or "")
            if not view.ok:
                return {status: view.status}
            return {
                status: view.status, summary: view.summary, components: view.components, plot: view.plot,
                result: view.state,
                **{s: gr.update(label=v.label, visible=v.visible, value=v.value)
                   for s, v in zip(sliders, view.sliders)},
                advanced: "", tag: view.tag, tag_message: view.tag_message, bake_name: view.bake_name,
                **{p: gr.update(choices=view.choices) for p in pickers},
                subfolder: gr.update(info=subfolder_info(view.subfolders)),
                tag_file: gr.update(choices=view.choices, value=view.state["label"]),
            }

        merged = merge_button.click(on_merge, inputs=form, outputs=outputs)
        if webui:
            merged.then(None, inputs=None, outputs=None, **js_kwargs("() => { ljlMergeRefreshCards(); }"))

        def on_tag_file(label, lbw, state):
            if label and state and state.get("label") == label:
                # already shown (a merge just set it): keep the sliders the user may have moved.  Not an
                # empty dict: gradio 3 reads that as one value for 13 outputs and shows an error.
                return {tag_message: gr.update()}
            view = callbacks.open_for_tag(service, label)
            if not view.ok:  # nothing to build on: the tag, sliders and bake must not act on the last file
                return {tag_message: view.status, result: {}, tag: "", bake_name: "",
                        **{s: gr.update(visible=False) for s in sliders}}
            text, message = callbacks.tag(view.state, [v.value for v in view.sliders], "", lbw,
                                          service.presets_or_none())
            return {result: view.state, tag: text, tag_message: message, bake_name: view.bake_name, advanced: "",
                    **{s: gr.update(label=v.label, visible=v.visible, value=v.value)
                       for s, v in zip(sliders, view.sliders)}}

        tag_file.change(on_tag_file, inputs=[tag_file, tag_lbw, result],
                        outputs=[result, tag, tag_message, bake_name, advanced, *sliders])

        def on_tag(state, adv, lbw, *values):
            text, message = callbacks.tag(state, values, adv, lbw, service.presets_or_none())
            return text, message

        tag_inputs = [result, advanced, tag_lbw, *sliders]
        for control in [*sliders, advanced, tag_lbw]:
            control.change(on_tag, inputs=tag_inputs, outputs=[tag, tag_message])

        def on_bake(state, adv, lbw, out_name, over, dt, *values):
            view = callbacks.bake(service, state, values, adv, lbw, out_name, None, over, dt)  # beside its source
            if not view.ok:
                return [view.status, *[gr.update() for _ in pickers], gr.update()]
            return [f"{view.status}  \n{view.summary}", *[gr.update(choices=view.choices) for _ in pickers],
                    gr.update(choices=view.choices)]

        baked = bake_button.click(on_bake, inputs=[result, advanced, tag_lbw, bake_name, bake_overwrite, dtype,
                                                   *sliders], outputs=[bake_status, *pickers, tag_file])
        if webui:
            baked.then(None, inputs=None, outputs=None, **js_kwargs("() => { ljlMergeRefreshCards(); }"))
            to_txt2img.click(None, inputs=[tag], outputs=None,
                             **js_kwargs("(tag) => { ljlMergeSendTag('txt2img', tag); }"))
            to_img2img.click(None, inputs=[tag], outputs=None,
                             **js_kwargs("(tag) => { ljlMergeSendTag('img2img', tag); }"))
    return demo


def _service(source, presets, serialize, on_written) -> MergeService:
    if isinstance(source, MergeService):
        return source
    library = source if isinstance(source, LoraLibrary) else LoraLibrary.of(*source)
    return MergeService(library, presets=presets, serialize=serialize, on_written=on_written)
