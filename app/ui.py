"""The Gradio UI: the canvas, generation controls, the box list and editor, export and session files.

The canvas is a ``gr.HTML`` whose static template hosts the OpenSeadragon viewer of
``static/viewer.js`` (FACTS §7). Python -> browser: handlers return a new *viewer value*
(:func:`viewer_value`: the image version to show, the boxes, progress). Browser -> Python:
the viewer triggers the custom events ``box_edit``, ``box_select`` and ``history``. Each
session's state (undo history, boxes, pictures) lives on the server (:mod:`app.sessions`);
the browser only holds the session key.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import numpy as np

from .context import AppContext
from .generate import GUIDANCE_MISSING, Busy, Cancelled, Finished, generate
from .sessionfile import load as load_session_file
from .sessions import KINDS, BoxSpec, Session, SessionNotFound, State

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
CANVAS_PRESETS = [("1024²", "1024"), ("2048²", "2048"), ("4096²", "4096"), ("8192²", "8192"), ("custom", "custom")]
DEFAULT_CANVAS = 2048
EXPIRED = "Your session has expired (idle too long or the server restarted). Reload the page to start a new one."

VIEWER_HTML = """
<div class="infd-viewer infd-empty">
  <div class="infd-osd"></div>
  <div class="infd-toolbar">
    <button type="button" data-action="draw" title="Draw a box (B, or shift-drag)">▭ Box</button>
    <button type="button" data-action="one" title="Zoom to 1:1 pixels (1)">1:1</button>
    <button type="button" data-action="home" title="Fit the whole image (0)">Fit</button>
  </div>
  <div class="infd-progress"><div class="infd-bar"></div><span class="infd-progress-text"></span></div>
  <div class="infd-hint">Press <b>Generate</b> (or G) to create an image.</div>
</div>
"""
# The custom event names must appear quoted in js_on_load for Gradio to expose them (FACTS §7).
VIEWER_JS = "InfdViewer.mount(element, props, trigger, watch, ['box_edit', 'box_select', 'history']);"
DOWNLOAD_JS = """(url) => {
  if (!url) return;
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


def viewer_head() -> str:
    """Scripts the viewer needs, loaded once before ``js_on_load`` (relative URLs: works under a path prefix)."""
    stamp = int(max(p.stat().st_mtime for p in STATIC.iterdir()))
    return ('<script src="infd/osd/openseadragon.min.js"></script>'
            f'<script src="infd/viewer/viewer.js?v={stamp}"></script>')


def viewer_value(s: Session, progress: tuple[int, int] | None = None) -> dict[str, Any]:
    """What the browser's viewer shows: the newest view of the session, its boxes, progress."""
    view = s.view
    image = None
    if view is not None:
        p = view.pyramid
        image = {"gen": view.gen, "width": p.width, "height": p.height, "tile": p.tile, "overlap": p.overlap,
                 "min_level": p.min_level, "max_level": p.max_level, "preview": view.preview}
    st = s.state
    return {"session": s.key, "image": image, "boxes": [b.to_json() for b in st.boxes], "selected": s.selected,
            "rev": s.client_rev, "progress": {"step": progress[0], "total": progress[1]} if progress else None}


def box_label(i: int, b: BoxSpec) -> str:
    detail = {"text": b.prompt or "(no prompt yet)", "image": "reference image" if b.image is not None else "(no image)",
              "color": _rgb_to_hex(b.color) if b.color else "(no colour)", "keep": "keep what is there"}[b.kind]
    return f"{i}. {b.kind}: {detail[:48]}" + (f"  ×{b.weight:g}" if b.weight != 1 else "")


def _hex_to_rgb(value: str) -> tuple[float, float, float]:
    v = (value or "").strip().lstrip("#")
    if len(v) != 6:
        raise ValueError(f"colour must be #rrggbb, got {value!r}")
    try:
        return tuple(int(v[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"colour must be #rrggbb, got {value!r}") from None


def _rgb_to_hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` from a UI field, or a gr.Error saying what is wrong."""
    if isinstance(value, str):
        value = value.strip()
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise gr.Error(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
    return int(f)


def apply_box_edit(s: Session, data: Any) -> bool:
    """Apply one geometry edit from the viewer (``add``/``update``/``delete``); returns True if the selection changed.

    ``data``: ``{"op", "rev", "box": {"id", "x0", "y0", "x1", "y1"}}`` (``{"op": "delete", "id"}``).
    Raises ValueError for malformed edits (the viewer then resynchronises from the server).
    """
    if not isinstance(data, dict):
        raise ValueError("malformed edit")
    with s.lock:
        rev = data.get("rev")
        if isinstance(rev, int) and not isinstance(rev, bool):
            s.client_rev = max(s.client_rev, rev)
        op, st = data.get("op"), s.state
        if op == "delete":
            box_id = data.get("id")
            s.commit(st.without_box(box_id))
            if s.selected == box_id:
                s.selected = None
            return True
        geo = data.get("box")
        if not isinstance(geo, dict):
            raise ValueError("malformed edit: no box")
        coords = {k: geo.get(k) for k in ("x0", "y0", "x1", "y1")}
        if op == "add":
            s.commit(st.with_box(BoxSpec(id=geo.get("id"), **coords)))
            s.selected = geo.get("id")
            return True
        if op == "update":
            old = st.box(geo.get("id"))
            if old is None:
                raise ValueError("that box no longer exists")
            s.commit(st.with_box(replace(old, **coords)))
            return False
        raise ValueError(f"unknown edit {op!r}")


def commit_editor(s: Session, box_id: str | None, kind: str, prompt: str, weight: float, color: str) -> None:
    """Store the editor fields into box ``box_id`` (one undo step if anything changed)."""
    with s.lock:
        box = s.state.box(box_id) if box_id else None
        if box is None:
            return
        rgb = _hex_to_rgb(color) if kind == "color" else box.color
        new = replace(box, kind=kind, prompt=(prompt or "").strip(), weight=float(weight), color=rgb)
        s.commit(s.state.with_box(new))


def commit_global_prompt(s: Session, prompt: str) -> None:
    with s.lock:
        s.commit(replace(s.state, global_prompt=(prompt or "").strip()))


def report_markdown(report: dict[str, Any] | None) -> str:
    """The guidance report as a short table: what each condition scored and how prompts were understood."""
    if not report:
        return ""
    lines = [f"**Guidance** — scorer `{report.get('scorer')}`, scale {report.get('scale')}", "",
             "| # | kind | prompt | understood as | loss |", "|---|---|---|---|---|"]
    for i, r in enumerate(report.get("regions", [])):
        understood = r.get("understood_as", "")
        if r.get("known") is False:
            understood = f"⚠ {understood}"
        lines.append(f"| {i} | {r.get('kind')} | {r.get('prompt', '')} | {understood} | {r.get('loss', 0):.3f} |")
    return "\n".join(lines)


def build_ui(ctx: AppContext) -> gr.Blocks:
    """The app's Blocks; ``ctx`` holds the model and the sessions."""
    pipe = ctx.pipe
    describe = pipe.describe()
    guided_ok = not GUIDANCE_MISSING

    def get(key: Any) -> Session:
        try:
            return ctx.store.get(key)
        except SessionNotFound:
            raise gr.Error(EXPIRED) from None

    with gr.Blocks(title="infd — neural field canvas") as demo:
        key = gr.State(None, delete_callback=ctx.store.delete)
        editing = gr.State(None)  # id of the box shown in the editor
        gr.Markdown(f"### infd — image neural field diffusion &nbsp; <small>model `{describe['name']}`"
                    f"{' (' + ctx.model_note + ')' if ctx.model_note else ''} · {describe['device']} · "
                    f"{describe['precision']}</small>", elem_id="infd-header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=480):
                viewer = gr.HTML(None, html_template=VIEWER_HTML, js_on_load=VIEWER_JS, head=viewer_head(),
                                 elem_id="infd-viewer", apply_default_css=False)
                status = gr.Markdown("", elem_id="infd-status")
            with gr.Column(scale=1, min_width=360, elem_id="infd-side"):
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, min_width=90, elem_id="infd-seed")
                    dice = gr.Button("Random", size="sm", min_width=60, elem_id="infd-dice")
                    steps = gr.Number(50, label="Steps", precision=0, minimum=1, maximum=1000, min_width=70,
                                      elem_id="infd-steps")
                with gr.Row():
                    canvas = gr.Dropdown(CANVAS_PRESETS, value=str(DEFAULT_CANVAS), label="Canvas", min_width=90,
                                         elem_id="infd-canvas")
                    canvas_w = gr.Number(DEFAULT_CANVAS, label="Width", precision=0, visible=False, min_width=70)
                    canvas_h = gr.Number(DEFAULT_CANVAS, label="Height", precision=0, visible=False, min_width=70)
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", min_width=80, elem_id="infd-generate")
                    guided_btn = gr.Button("Guided", variant="primary", min_width=80, elem_id="infd-guided",
                                           interactive=guided_ok)
                    cancel_btn = gr.Button("Cancel", variant="stop", min_width=60, elem_id="infd-cancel")
                if not guided_ok:
                    gr.Markdown(f"⚠ {GUIDANCE_MISSING}. Boxes can still be drawn and saved.")
                with gr.Tabs():
                    with gr.Tab("Boxes"):
                        global_prompt = gr.Textbox(label="Global prompt (whole canvas)", lines=1,
                                                   elem_id="infd-global")
                        box_list = gr.Radio([], label="Boxes: shift-drag on the canvas to draw one",
                                            elem_id="infd-boxes")
                        with gr.Group(visible=False) as editor:
                            kind = gr.Dropdown(list(KINDS), value="text", label="Kind of the selected box",
                                               elem_id="infd-kind")
                            prompt = gr.Textbox(label="Prompt (Enter to apply)", lines=1, elem_id="infd-prompt")
                            weight = gr.Slider(0, 10, value=1.0, step=0.1, label="Weight", elem_id="infd-weight")
                            color = gr.ColorPicker("#d04030", label="Colour", visible=False)
                            image = gr.Image(label="Reference image", type="numpy", visible=False, height=160)
                            delete_btn = gr.Button("Delete box", size="sm", variant="secondary")
                        with gr.Row():
                            undo_btn = gr.Button("↶ Undo", size="sm", elem_id="infd-undo")
                            redo_btn = gr.Button("↷ Redo", size="sm", elem_id="infd-redo")
                        scale = gr.Slider(0, 5, value=1.0, step=0.1, label="Guidance strength", elem_id="infd-scale")
                        report = gr.Markdown("", elem_id="infd-report")
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
                    with gr.Tab("Keys"):
                        gr.Markdown(SHORTCUTS)

        # --- outputs shared by handlers: the viewer, the box list, the editor and the global prompt -------
        # The editor is only refreshed when the selection (or the whole state) changes, so an answer
        # to a canvas edit never overwrites a prompt being typed; `editing` is the box it shows.
        panel = [viewer, box_list, editing, editor, kind, prompt, weight, color, image, global_prompt]

        def panel_values(s: Session, refresh: str = "editor") -> list[Any]:
            """Values for ``panel``; ``refresh``: "list" (viewer and list), "editor" (+ editor) or "all"."""
            st = s.state
            choices = [(box_label(i, b), b.id) for i, b in enumerate(st.boxes, 1)]
            out: list[Any] = [viewer_value(s), gr.update(choices=choices, value=s.selected)]
            if refresh == "list":
                return out + [gr.skip()] * 8
            b = st.box(s.selected) if s.selected else None
            if b is None:
                out += [None, gr.update(visible=False)] + [gr.skip()] * 5
            else:
                out += [b.id, gr.update(visible=True), b.kind, gr.update(value=b.prompt, visible=b.kind == "text"),
                        b.weight, gr.update(value=_rgb_to_hex(b.color) if b.color else "#d04030",
                                            visible=b.kind == "color"),
                        gr.update(value=b.image, visible=b.kind == "image")]
            return out + [st.global_prompt if refresh == "all" else gr.skip()]

        def on_load() -> list[Any]:
            s = ctx.store.create(canvas=(DEFAULT_CANVAS, DEFAULT_CANVAS))
            return [s.key, *panel_values(s)]

        def on_box_edit(k: str, evt: gr.EventData) -> list[Any]:
            s = get(k)
            try:
                changed = apply_box_edit(s, evt._data)
            except ValueError as e:
                gr.Warning(f"Box not changed: {e}")
                changed = True
            return panel_values(s, "editor" if changed else "list")

        def on_box_select(k: str, evt: gr.EventData) -> list[Any]:
            s = get(k)
            box_id = evt._data.get("id") if isinstance(evt._data, dict) else None
            s.selected = box_id if box_id and s.state.box(box_id) else None
            return panel_values(s)

        def on_list_select(k: str, box_id: str | None) -> list[Any]:
            s = get(k)
            s.selected = box_id if box_id and s.state.box(box_id) else None
            return panel_values(s)

        def on_history(k: str, evt: gr.EventData) -> list[Any]:
            action = evt._data.get("action") if isinstance(evt._data, dict) else None
            return on_undo_redo(k, action == "redo")

        def on_undo_redo(k: str, redo: bool) -> list[Any]:
            s = get(k)
            if not (s.redo() if redo else s.undo()):
                gr.Info("Nothing to redo." if redo else "Nothing to undo.")
            return panel_values(s, "all")

        def on_editor(k: str, box_id: str | None, kind_: str, prompt_: str, weight_: float, color_: str) -> list[Any]:
            s = get(k)
            try:
                commit_editor(s, box_id, kind_, prompt_, weight_, color_)
            except ValueError as e:
                raise gr.Error(f"Box not changed: {e}") from None
            out = panel_values(s, "list")
            # show the fields that belong to the (possibly new) kind, without touching their values
            out[5:9] = [gr.update(visible=kind_ == "text"), gr.skip(), gr.update(visible=kind_ == "color"),
                        gr.update(visible=kind_ == "image")]
            return out

        def on_image(k: str, box_id: str | None, img: np.ndarray | None) -> list[Any]:
            s = get(k)
            with s.lock:
                box = s.state.box(box_id) if box_id else None
                if box is not None:
                    try:
                        s.commit(s.state.with_box(replace(box, image=None if img is None else img[..., :3])))
                    except ValueError as e:
                        raise gr.Error(f"Reference image not used: {e}") from None
            return panel_values(s, "list")

        def on_delete(k: str) -> list[Any]:
            s = get(k)
            if s.selected:
                apply_box_edit(s, {"op": "delete", "id": s.selected})
            return panel_values(s)

        def on_global(k: str, text: str) -> list[Any]:
            s = get(k)
            commit_global_prompt(s, text)
            return panel_values(s, "list")

        def on_canvas(k: str, choice: str, w: Any, h: Any) -> list[Any]:
            s = get(k)
            side = ctx.limits.max_canvas_side
            if choice == "custom":
                width, height = _int(w, "width", 16, side), _int(h, "height", 16, side)
            else:
                width = height = _int(choice, "canvas", 16, side)
            s.set_canvas(width, height)
            custom = choice == "custom"
            return [viewer_value(s), gr.update(visible=custom, value=width), gr.update(visible=custom, value=height),
                    width, height]

        def run(k: str, seed_: Any, steps_: Any, scale_: float, box_id: str | None, kind_: str, prompt_: str,
                weight_: float, color_: str, global_: str, guided: bool) -> Iterator[list[Any]]:
            s = get(k)
            seed_i, steps_i = _int(seed_, "seed", 0, 2**32 - 1), _int(steps_, "steps", 1, 1000)
            try:  # the editor's fields may not have been applied yet (no blur before the click)
                commit_editor(s, box_id, kind_, prompt_, weight_, color_)
                commit_global_prompt(s, global_)
                first = "Loading the guidance scorer (first time only)…" if guided and not ctx.scorer_loaded else ""
                yield [viewer_value(s, (0, steps_i)), first or "Generating…", gr.skip()]
                for event in generate(ctx, s, seed=seed_i, steps=steps_i, guided=guided, scale=float(scale_)):
                    if isinstance(event, Finished):
                        yield [viewer_value(s), f"Done: {event.view.picture.label}.", report_markdown(event.report)]
                    else:
                        yield [viewer_value(s, (event.step, event.total)), f"Step {event.step}/{event.total}",
                               gr.skip()]
            except Busy as e:
                raise gr.Error(str(e)) from None
            except Cancelled:
                yield [viewer_value(s), "Cancelled; the previous image is back.", gr.skip()]
            except ValueError as e:
                raise gr.Error(str(e)) from None
            except Exception as e:  # e.g. a scorer that cannot load: tell the user, keep serving
                log.exception("generation failed")
                raise gr.Error(f"Generation failed: {e}") from None

        def on_generate(*args: Any) -> Iterator[list[Any]]:
            yield from run(*args, guided=False)

        def on_guided(*args: Any) -> Iterator[list[Any]]:
            yield from run(*args, guided=True)

        def on_cancel(k: str) -> list[Any]:
            """Stop this session's run at its next step and wait until the previous image is back."""
            s = get(k)
            if not s.busy.locked():
                return [gr.skip(), "Nothing to cancel."]
            s.cancel.set()
            if s.busy.acquire(timeout=120):
                s.busy.release()
            return [viewer_value(s), "Cancelled; the previous image is back."]

        def on_export(k: str, w: Any, h: Any, fmt: str) -> list[str]:
            s = get(k)
            view = s.view
            if view is None:
                raise gr.Error("Generate an image first.")
            if view.preview:
                raise gr.Error("Wait for the generation to finish (or cancel it), then export.")
            side = ctx.limits.max_canvas_side
            width, height = _int(w, "export width", 1, side), _int(h, "export height", 1, side)
            try:
                ctx.check_export(width, height)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            name = "image.png" if fmt == "PNG" else "deepzoom.zip"
            href = f"export/{s.key}/{view.gen}/{name}?width={width}&height={height}"
            return [href, f"Rendering [{name} ({width}×{height})]({href}) tile by tile; the download starts "
                          "when the first rows are ready."]

        def on_save(k: str) -> list[str]:
            s = get(k)
            href = f"session/{s.key}/infd-session.zip"
            return [href, f"[infd-session.zip]({href}): the image, boxes and prompts; load it with *Load session*."]

        def on_load_file(k: str, data: bytes | None) -> list[Any]:
            s = get(k)
            if not data:
                raise gr.Error("No file received.")
            try:
                loaded = load_session_file(data, pipe, ctx.limits.max_canvas_side)
            except ValueError as e:
                raise gr.Error(f"Could not load the session file: {e}") from None
            with s.lock:
                s.selected = None
                s.set_canvas(*loaded.canvas)
                s.commit(loaded.state)
            for w in loaded.warnings:
                gr.Warning(w)
            w_, h_ = loaded.canvas
            preset = str(w_) if w_ == h_ and str(w_) in dict(CANVAS_PRESETS).values() else "custom"
            return [*panel_values(s, "all"), preset, w_, h_, loaded.seed if loaded.seed is not None else gr.skip(),
                    "Session loaded."]

        # --- wiring ------------------------------------------------------------------------------------
        # UI-only endpoints (api_visibility="private"): the model is scriptable through infd_core instead.
        light = dict(show_progress="hidden", concurrency_limit=None, api_visibility="private")
        ordered = dict(show_progress="hidden", api_visibility="private")  # one at a time, in arrival order
        model = dict(show_progress="hidden", concurrency_id="model", concurrency_limit=1, api_visibility="private")
        demo.load(on_load, None, [key, *panel], **light)
        viewer.box_edit(on_box_edit, key, panel, **ordered)
        viewer.box_select(on_box_select, key, panel, **light)
        viewer.history(on_history, key, panel, **ordered)
        box_list.input(on_list_select, [key, box_list], panel, **light)
        editor_inputs = [key, editing, kind, prompt, weight, color]
        kind.input(on_editor, editor_inputs, panel, **light)
        prompt.submit(on_editor, editor_inputs, panel, **light)
        prompt.blur(on_editor, editor_inputs, panel, **light)
        weight.release(on_editor, editor_inputs, panel, **light)
        color.input(on_editor, editor_inputs, panel, **light)
        image.input(on_image, [key, editing, image], panel, **light)
        delete_btn.click(on_delete, key, panel, **light)
        global_prompt.submit(on_global, [key, global_prompt], panel, **light)
        global_prompt.blur(on_global, [key, global_prompt], panel, **light)
        undo_btn.click(lambda k: on_undo_redo(k, False), key, panel, **light)
        redo_btn.click(lambda k: on_undo_redo(k, True), key, panel, **light)
        dice.click(lambda: int(np.random.randint(0, 2**31 - 1)), None, seed, **light)
        canvas_outputs = [viewer, canvas_w, canvas_h, export_w, export_h]
        canvas.input(on_canvas, [key, canvas, canvas_w, canvas_h], canvas_outputs, **light)
        canvas_w.submit(on_canvas, [key, canvas, canvas_w, canvas_h], canvas_outputs, **light)
        canvas_h.submit(on_canvas, [key, canvas, canvas_w, canvas_h], canvas_outputs, **light)

        run_inputs = [key, seed, steps, scale, editing, kind, prompt, weight, color, global_prompt]
        run_outputs = [viewer, status, report]
        gen_evt = gen_btn.click(on_generate, run_inputs, run_outputs, **model)
        guided_evt = guided_btn.click(on_guided, run_inputs, run_outputs, **model)
        # cancels= drops a run still waiting for the model; a running one stops via the session's flag
        cancel_btn.click(on_cancel, key, [viewer, status], cancels=[gen_evt, guided_evt], **light)

        export_btn.click(on_export, [key, export_w, export_h, export_fmt], [url, link], **light).success(
            None, url, None, js=DOWNLOAD_JS)
        save_btn.click(on_save, key, [url, link], **light).success(None, url, None, js=DOWNLOAD_JS)
        load_btn.upload(on_load_file, [key, load_btn], [*panel, canvas, canvas_w, canvas_h, seed, status], **light)
    return demo
