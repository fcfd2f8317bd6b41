"""The Gradio UI: layout of the canvas and the side panel, and which event runs which handler.

The canvas is a ``gr.HTML`` whose static template hosts the OpenSeadragon viewer of
``static/viewer.js``; the handlers (what the events do) are in :mod:`app.handlers`.
Each session's state lives on the server (:mod:`app.sessions`); the page holds only its key.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from infd_core.regions import KINDS, MAX_PROMPT, PLACEMENTS

from .context import AppContext
from infd_core import compositions

from .handlers import (CANVAS_PRESETS, COARSENESS_CHOICES, DEFAULT_CANVAS, DEFAULT_COLOR, EXTEND_CELLS, EXTEND_SIDES,
                       MAX_REFINE, NO_REPORT, RANDOM_EXAMPLE, CanvasOut, EditorIn, Handlers, HistoryOut, LoadOut, Panel,
                       RunIn, RunOut, ShapeOut, SketchOut, composition_choices, sketch_editor_value)

STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_TTL = 3600  # seconds an upload may stay in Gradio's cache (photos are deleted as soon as read)

VIEWER_HTML = """
<div class="infd-viewer infd-empty">
  <div class="infd-osd"></div>
  <div class="infd-toolbar">
    <button type="button" data-action="undo" title="Undo (Ctrl+Z)">↶</button>
    <button type="button" data-action="redo" title="Redo (Ctrl+Shift+Z)">↷</button>
    <button type="button" data-action="draw" title="Draw a box (B, or shift-drag)">▭ Box</button>
    <button type="button" data-action="one" title="Zoom to 1:1 pixels (1)">1:1</button>
    <button type="button" data-action="home" title="Fit the whole image (0)">Fit</button>
  </div>
  <div class="infd-progress"><div class="infd-bar"></div><span class="infd-progress-text"></span></div>
  <div class="infd-hint"><span>Press <b>Generate</b> (or G) to paint a landscape over an example composition, paint your own in tab <b>Sketch</b>, or open a photo (tab <b>Photo</b>) to zoom into it.</span></div>
</div>
"""
# The custom event names must appear quoted in js_on_load for Gradio 6 to expose them as events.
VIEWER_JS = "InfdViewer.mount(element, props, trigger, watch, ['box_edit', 'box_select', 'history', 'view_shown']);"
DOWNLOAD_JS = """(url) => {
  if (!url) return;
  if (window.infd) infd.state.downloadAt = Date.now();  // following the link does not leave the page
  const a = document.createElement('a');
  a.href = url; a.download = ''; document.body.appendChild(a); a.click(); a.remove();
}"""

SHORTCUTS = """
| key | action |
|---|---|
| drag, wheel, pinch | pan and zoom |
| shift-drag, or **B** then drag | draw a box |
| click a box, drag it, drag its handles | select, move, resize |
| **Delete** / Backspace | delete the selected box |
| **Ctrl+Z**, **Ctrl+Shift+Z** / Ctrl+Y | undo, redo (boxes, prompts and generations) |
| **G**, **Shift+G** | generate, guided generate |
| **1**, **0** | zoom to 1:1 pixels, fit the image |
| **Esc** | stop drawing, deselect |
"""


SKETCH_COLORS = ["#76a2d6", "#b0c6de", "#3a6096", "#2a4e28", "#54893a", "#789c46", "#767470", "#c8b88c",
                 "#8a6a48", "#e8e4dc"]  # sky, haze, water, forest, grass, meadow, rock, sand, earth, cloud


def viewer_head() -> str:
    """Scripts the viewer needs, loaded once before ``js_on_load`` (relative URLs: works under a path prefix)."""
    stamp = int(max(p.stat().st_mtime for p in STATIC.iterdir()))
    return ('<script src="infd/osd/openseadragon.min.js"></script>'
            f'<script src="infd/viewer/viewer.js?v={stamp}"></script>')


def build_ui(ctx: AppContext) -> gr.Blocks:
    """The app's Blocks; ``ctx`` holds the model and the sessions."""
    on = Handlers(ctx)
    describe = ctx.pipe.describe()
    diffusion = ctx.pipe.cfg.diffusion
    model_steps = diffusion.steps if diffusion is not None else 50  # the model's own sampler (imported: 200)
    # uploads (photos, session files, reference images) are deleted from Gradio's cache after an hour
    with gr.Blocks(title="infd — neural field canvas", delete_cache=(UPLOAD_TTL, UPLOAD_TTL)) as demo:
        key = gr.State(None, delete_callback=ctx.store.delete)
        editing = gr.State(None)  # id of the box shown in the editor
        note = f" ({ctx.model_note})" if ctx.model_note else ""
        gr.Markdown(f"### infd — image neural field diffusion &nbsp; <small>model `{describe['name']}`{note} · "
                    f"{describe['device']} · {describe['precision']}</small>", elem_id="infd-header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=480):
                viewer = gr.HTML(None, html_template=VIEWER_HTML, js_on_load=VIEWER_JS, head=viewer_head(),
                                 elem_id="infd-viewer", apply_default_css=False)
                status = gr.Markdown("", elem_id="infd-status")
                with gr.Accordion("Report", open=False, elem_id="infd-report-box") as report_box:  # opened by a guided run
                    report = gr.Markdown(NO_REPORT, elem_id="infd-report")
                with gr.Accordion("Keys", open=False):
                    gr.Markdown(SHORTCUTS)
            with gr.Column(scale=1, min_width=400, elem_id="infd-side"):
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, min_width=80, elem_id="infd-seed")
                    dice = gr.Button("Random", size="sm", min_width=60, elem_id="infd-dice")
                    steps = gr.Number(model_steps, label="Steps", precision=0, minimum=1, maximum=1000, min_width=70,
                                      elem_id="infd-steps")
                    scale = gr.Number(0.2, label="Guidance", minimum=0, maximum=20, step=0.1, min_width=70,
                                      elem_id="infd-scale")
                with gr.Row():
                    canvas = gr.Dropdown(CANVAS_PRESETS, value=str(DEFAULT_CANVAS), label="Canvas", min_width=110,
                                         elem_id="infd-canvas")
                    composition = gr.Dropdown(composition_choices(), value=RANDOM_EXAMPLE, label="Composition",
                                              elem_id="infd-composition", min_width=200, scale=2)
                with gr.Row():  # shown for a custom canvas
                    canvas_w = gr.Number(DEFAULT_CANVAS, label="Canvas width", precision=0, visible=False,
                                         elem_id="infd-canvas-w")
                    canvas_h = gr.Number(DEFAULT_CANVAS, label="Canvas height", precision=0, visible=False,
                                         elem_id="infd-canvas-h")
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", min_width=80, elem_id="infd-generate")
                    guided_btn = gr.Button("Guided", variant="primary", min_width=80, elem_id="infd-guided")
                    cancel_btn = gr.Button("Cancel", variant="stop", min_width=60, elem_id="infd-cancel")
                with gr.Tabs(elem_id="infd-tabs"):
                    with gr.Tab("Boxes", id="boxes"):
                        with gr.Row(equal_height=False):
                            global_prompt = gr.Textbox(show_label=False, placeholder="Global prompt (whole canvas)",
                                                       lines=1, max_length=MAX_PROMPT, elem_id="infd-global", scale=3)
                            local = gr.Checkbox(True, label="Boxes act locally", elem_id="infd-local",
                                                scale=2, min_width=120, container=False)
                        box_list = gr.Radio([], label="Boxes: shift-drag on the canvas to draw one",
                                            elem_id="infd-boxes")
                        with gr.Group(visible=False) as editor:
                            with gr.Row():
                                kind = gr.Dropdown(list(KINDS), value="text", label="Kind", min_width=90,
                                                   elem_id="infd-kind")
                                weight = gr.Number(1.0, label="Weight", minimum=0, maximum=100, step=0.1,
                                                   min_width=70, elem_id="infd-weight")
                            prompt = gr.Textbox(label="Prompt (Enter to apply)", lines=1, max_length=MAX_PROMPT,
                                                elem_id="infd-prompt")
                            color = gr.ColorPicker(DEFAULT_COLOR, label="Colour", visible=False)
                            image = gr.Image(label="Reference image", type="numpy", visible=False, height=160)
                            placement = gr.Radio(list(PLACEMENTS), value="hard", label="Placement", visible=False,
                                                 info="hard: kept as placed; soft: the sampler may rework it",
                                                 elem_id="infd-placement")
                            coarseness = gr.Dropdown(COARSENESS_CHOICES, value=KINDS["sketch"].coarseness,
                                                     label="Coarseness (latent cells a block)", visible=False,
                                                     info="the box holds its picture's block means; finer is "
                                                          "closer to the picture, coarser leaves the model more",
                                                     elem_id="infd-coarseness")
                            delete_btn = gr.Button("Delete box", size="sm", variant="secondary", elem_id="infd-delete")
                    with gr.Tab("Sketch", elem_id="infd-sketch-tab"):
                        gr.Markdown("Paint the layout in flat colours (or upload a picture), then *Use as "
                                    "composition*. Generate keeps its colours in 4-cell blocks; the model paints "
                                    "the texture. Colour and sketch boxes add to it.")
                        sketch = gr.ImageEditor(sketch_editor_value(compositions.example("horizon")), type="numpy",
                                                image_mode="RGB", canvas_size=(256, 256), fixed_canvas=True,
                                                sources=("upload", "clipboard"), transforms=(), layers=False,
                                                brush=gr.Brush(colors=SKETCH_COLORS, default_size=12,
                                                               color_mode="defaults"),
                                                eraser=gr.Eraser(default_size=16), height=270, show_label=False,
                                                elem_id="infd-sketch")
                        with gr.Row():
                            sketch_btn = gr.Button("Use as composition", variant="primary", size="sm",
                                                   elem_id="infd-use-sketch")
                            sketch_example = gr.Dropdown(list(compositions.names()), value="horizon",
                                                         label="Example", min_width=120,
                                                         elem_id="infd-sketch-example")
                    with gr.Tab("Export", elem_id="infd-export-tab"):
                        with gr.Row():
                            export_w = gr.Number(DEFAULT_CANVAS, label="Width", precision=0, elem_id="infd-export-w")
                            export_h = gr.Number(DEFAULT_CANVAS, label="Height", precision=0, elem_id="infd-export-h")
                        export_fmt = gr.Radio(["PNG", "Deep Zoom zip"], value="PNG", show_label=False,
                                              elem_id="infd-export-fmt")
                        export_btn = gr.Button("Export", elem_id="infd-export")
                        with gr.Row():
                            save_btn = gr.Button("Save session", size="sm", elem_id="infd-save")
                            load_btn = gr.UploadButton("Load session", file_types=[".zip"], size="sm",
                                                       type="binary", elem_id="infd-load")
                        link = gr.Markdown("", elem_id="infd-link")
                        url = gr.Textbox(visible="hidden", elem_id="infd-url")
                    with gr.Tab("Photo", elem_id="infd-photo-tab"):
                        gr.Markdown("Open a photo to zoom into it or export it at any size; guided generation "
                                    "then starts from it (*keep* boxes keep what they cover). The model sees it squashed "
                                    "to its 256² square input, like in training; the canvas takes the photo's "
                                    "shape (its longest side kept). Refining fits the latent to "
                                    "the photo (about 1 s a step on 2 CPU cores): sharper, but slower to open.")
                        with gr.Row():
                            refine = gr.Number(0, label="Refine steps", precision=0, minimum=0, maximum=MAX_REFINE,
                                               min_width=80, elem_id="infd-refine")
                            photo_btn = gr.UploadButton("Open photo", file_types=["image"], type="filepath",
                                                        elem_id="infd-photo")
                    with gr.Tab("Extend", elem_id="infd-extend-tab"):
                        gr.Markdown("Outpaint: grow the picture on one side by whole latent cells (64 cells is "
                                    "one square's worth). What is there stays exactly; the new part is sampled to "
                                    "continue it, with the seed and steps above. The canvas grows at the same pixel "
                                    "density; Undo takes it back. For a new panorama pick a 2:1 or 3:1 canvas "
                                    "and Generate.")
                        with gr.Row():
                            extend_side = gr.Dropdown(EXTEND_SIDES, value="right", label="Side", min_width=90,
                                                      elem_id="infd-extend-side")
                            extend_cells = gr.Dropdown(EXTEND_CELLS, value=64, label="Cells", min_width=70,
                                                       elem_id="infd-extend-cells")
                            extend_btn = gr.Button("Extend", min_width=70, elem_id="infd-extend")

        # --- wiring (UI-only endpoints, api_visibility="private": the model is scriptable via infd_core) -----
        panel = list(Panel(viewer=viewer, box_list=box_list, editing=editing, editor=editor, kind=kind, prompt=prompt,
                           weight=weight, color=color, image=image, placement=placement, coarseness=coarseness,
                           global_prompt=global_prompt))
        light = dict(show_progress="hidden", concurrency_limit=None, api_visibility="private")
        ordered = dict(show_progress="hidden", api_visibility="private")  # one at a time, in arrival order
        model = dict(show_progress="minimal", show_progress_on=status, concurrency_id="model", concurrency_limit=1,
                     api_visibility="private")  # one generation at a time; the others see their queue position
        demo.load(on.load, None, [key, *panel], **light)
        viewer.box_edit(on.box_edit, key, panel, **ordered)
        viewer.box_select(on.box_select, key, panel, **light)
        viewer.history(on.history, key, list(HistoryOut(*panel, status=status, report=report)), **ordered)
        viewer.view_shown(on.view_shown, key, status, **light)
        box_list.input(on.select, [key, box_list], panel, **light)
        editor_inputs = list(EditorIn(key=key, box_id=editing, kind=kind, prompt=prompt, weight=weight, color=color,
                                      placement=placement, coarseness=coarseness))
        kind.input(on.editor, editor_inputs, panel, **light)
        prompt.submit(on.editor, editor_inputs, panel, **light)
        prompt.blur(on.editor, editor_inputs, panel, **light)
        weight.submit(on.editor, editor_inputs, panel, **light)
        weight.blur(on.editor, editor_inputs, panel, **light)
        color.input(on.editor, editor_inputs, panel, **light)  # the gradient
        color.submit(on.editor, editor_inputs, panel, **light)  # a typed #rrggbb and Enter
        color.blur(on.editor, editor_inputs, panel, **light)
        placement.input(on.editor, editor_inputs, panel, **light)
        coarseness.input(on.editor, editor_inputs, panel, **light)
        image.input(on.reference_image, [key, editing, image], panel, **light)
        delete_btn.click(on.delete, key, panel, **light)
        global_prompt.submit(on.global_prompt, [key, global_prompt], panel, **light)
        global_prompt.blur(on.global_prompt, [key, global_prompt], panel, **light)
        dice.click(lambda: int(np.random.randint(0, 2**31 - 1)), None, seed, **light)
        canvas_inputs = [key, canvas, canvas_w, canvas_h]
        canvas_outputs = list(CanvasOut(viewer=viewer, canvas_w=canvas_w, canvas_h=canvas_h, export_w=export_w,
                                        export_h=export_h))
        canvas.input(on.canvas, canvas_inputs, canvas_outputs, **light)
        for field in (canvas_w, canvas_h):
            field.submit(on.canvas, canvas_inputs, canvas_outputs, **light)
            field.blur(on.canvas, canvas_inputs, canvas_outputs, **light)

        run_inputs = list(RunIn(key=key, seed=seed, steps=steps, scale=scale, local=local, global_prompt=global_prompt,
                                composition=composition, box_id=editing, kind=kind, prompt=prompt, weight=weight,
                                color=color, placement=placement, coarseness=coarseness))
        run_outputs = list(RunOut(viewer=viewer, status=status, report=report, report_box=report_box))
        gen_evt = gen_btn.click(on.generate, run_inputs, run_outputs, **model)
        guided_evt = guided_btn.click(on.guided, run_inputs, run_outputs, **model)
        shape_outputs = list(ShapeOut(viewer=viewer, status=status, canvas=canvas, canvas_w=canvas_w,
                                      canvas_h=canvas_h, export_w=export_w, export_h=export_h))
        photo_evt = photo_btn.upload(on.open_photo, [key, photo_btn, refine], shape_outputs, **model)
        extend_evt = extend_btn.click(on.extend, [key, extend_side, extend_cells, seed, steps], shape_outputs,
                                      **model)
        # cancels= drops a run still waiting for the model; a running one stops via the session's flag
        cancel_btn.click(on.cancel, key, [viewer, status], cancels=[gen_evt, guided_evt, photo_evt, extend_evt],
                         **light)

        sketch_btn.click(on.use_sketch, [key, sketch], list(SketchOut(composition=composition, status=status)),
                         **light)
        sketch_example.input(on.sketch_example, sketch_example, sketch, **light)

        export_btn.click(on.export, [key, export_w, export_h, export_fmt], [url, link], **light).success(
            None, url, None, js=DOWNLOAD_JS)
        save_btn.click(on.save, key, [url, link], **light).success(None, url, None, js=DOWNLOAD_JS)
        load_btn.upload(on.open, [key, load_btn], list(LoadOut(*panel, canvas=canvas, canvas_w=canvas_w,
                                                               canvas_h=canvas_h, export_w=export_w, export_h=export_h,
                                                               seed=seed, status=status)), **light)
    return demo
