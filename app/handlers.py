"""What the UI's events do: read and change a session, and say what the page should show next.

:class:`Handlers` methods are wired to components in :mod:`app.ui`; each returns its outputs as
a named tuple (:class:`Panel`, :class:`RunOut`, …) whose fields name the components, and the
handlers with many inputs read them as one (:class:`EditorIn`, :class:`RunIn`); :mod:`app.ui` wires
the same tuple types filled with components, so nothing depends on the order of two distant lists.
The viewer's events arrive as :class:`ViewerEvent` (its JSON object, no private Gradio attribute). Bad input never raises anything but ``gr.Error`` (shown to the user; the
session is left as it was).

The browser talks to the viewer through :func:`viewer_value` (Python -> browser) and the
viewer's events ``box_edit``, ``box_select`` and ``history`` (see ``static/viewer.js``).
"""
from __future__ import annotations

import logging
import os
import time
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np

from infd_core import compositions
from infd_core.geometry import Box, Size
from infd_core.images import read_photo
from infd_core.regions import KINDS, MAX_COARSENESS, Region
from infd_core.wording import label, summarize

from . import numbers
from .context import AppContext, client_of
from .generate import Busy, Cancelled, Composition, Finished, extend_picture, generate, open_photo
from .sessions import Session, SessionNotFound, View
from .store import TooManySessions

log = logging.getLogger(__name__)

# (label, value): a value is a side or WIDTHxHEIGHT (Size.parse)
CANVAS_PRESETS = [("1024²", "1024"), ("2048²", "2048"), ("4096²", "4096"), ("8192²", "8192"),
                  ("2:1 panorama", "4096x2048"), ("3:1 panorama", "6144x2048"),
                  ("custom", "custom")]
EXTEND_SIDES = [("← left", "left"), ("right →", "right"), ("↑ up", "up"), ("↓ down", "down")]
EXTEND_CELLS = [16, 32, 64]  # latent cells an extension adds (64: one square's worth)
DEFAULT_CANVAS = 2048
DEFAULT_COLOR = "#d04030"
COARSENESS_CHOICES = [c for c in (1, 2, 4, 8, 16) if c <= MAX_COARSENESS]  # a sketch box's block cells
NO_COMPOSITION, RANDOM_EXAMPLE, MY_SKETCH = "none", "random", "sketch"


def composition_choices() -> list[tuple[str, str]]:
    """The Composition dropdown: none, an example picked by the seed, the user's sketch, each example."""
    return [("none (the model alone)", NO_COMPOSITION), ("random example (by seed)", RANDOM_EXAMPLE),
            ("my sketch (tab Sketch)", MY_SKETCH), *((f"example: {n}", n) for n in compositions.names())]


def sketch_editor_value(picture: np.ndarray) -> dict[str, Any]:
    """What the sketch editor (``gr.ImageEditor``) shows to paint over: ``picture`` as its background."""
    return {"background": picture, "layers": [], "composite": picture}


def sketch_from_editor(value: Any) -> np.ndarray:
    """The painted sketch ``[h, w, 3]`` uint8 from the editor's value (its composite), or ValueError."""
    picture = value.get("composite") if isinstance(value, dict) else None
    if not isinstance(picture, np.ndarray) or picture.ndim != 3 or picture.shape[2] < 3:
        raise ValueError("paint something (or upload a picture) in the sketch editor first")
    return np.ascontiguousarray(picture[..., :3].astype(np.uint8))
MAX_REFINE = 500
NO_REPORT = "The guidance report appears here after a *Guided* run."
EXPIRED = "Your session has expired (idle too long or the server restarted). Reload the page to start a new one."


def remaining(elapsed: float, done: int, total: int) -> str:
    """``", about N s left"`` from the mean step so far (empty before a step is done)."""
    if done <= 0 or done >= total:
        return ""
    return f", about {elapsed / done * (total - done):.0f} s left"


def user_error(message: str) -> gr.Error:
    """The error shown to the user for bad input, logged as one line (Gradio would print a traceback)."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


class ViewerEvent(gr.EventData):
    """An event of the viewer (viewer.js): its JSON object as ``payload`` ({} when it sent anything else)."""

    def __init__(self, target: Any, data: Any):
        super().__init__(target, data)
        self.payload: dict[str, Any] = data if isinstance(data, dict) else {}


class EditorIn(NamedTuple):
    """The box editor's fields, as the UI passes them (its inputs list is built from this tuple)."""

    key: Any
    box_id: Any  # the box shown in the editor
    kind: Any
    prompt: Any
    weight: Any
    color: Any
    placement: Any
    coarseness: Any


# What Generate and Guided read: the run's settings (scale: the guidance strength; local: "boxes act
# locally"), then the editor's fields (applied first: a prompt typed without leaving its field has
# not been stored yet)
RunIn = NamedTuple("RunIn", [(f, Any) for f in ("key", "seed", "steps", "scale", "local", "global_prompt", "composition",
                                                 *EditorIn._fields[1:])])


class Panel(NamedTuple):
    """The canvas and the box editor: what most events refresh."""

    viewer: Any
    box_list: Any
    editing: Any  # id of the box shown in the editor
    editor: Any  # the editor's group (visible when a box is selected)
    kind: Any
    prompt: Any
    weight: Any
    color: Any
    image: Any
    placement: Any
    coarseness: Any
    global_prompt: Any


class RunOut(NamedTuple):
    viewer: Any
    status: Any
    report: Any
    report_box: Any  # the report's accordion under the canvas: opened after a guided run


class SketchOut(NamedTuple):
    """What using a sketch refreshes: the Composition choice (now the sketch) and the status."""

    composition: Any
    status: Any


# undo and redo refresh the panel, say what they did and show the report of the picture they come back to
HistoryOut = NamedTuple("HistoryOut", [*Panel.__annotations__.items(), ("status", Any), ("report", Any)])


class CanvasOut(NamedTuple):
    viewer: Any
    canvas_w: Any
    canvas_h: Any
    export_w: Any
    export_h: Any


# loading a session file refreshes the panel, the canvas, export and seed fields
LoadOut = NamedTuple("LoadOut", [*Panel.__annotations__.items(), ("canvas", Any), ("canvas_w", Any), ("canvas_h", Any),
                                 ("export_w", Any), ("export_h", Any), ("seed", Any), ("status", Any)])


def canvas_fields(size: Size) -> tuple[str, Any, Any]:
    """The canvas dropdown and its custom width/height fields showing a canvas the server chose (a
    loaded session's, an opened photo's aspect): a preset, else "custom"."""
    values = {v for _, v in CANVAS_PRESETS}
    square = str(size.width) if size.width == size.height else ""
    preset = next((v for v in (square, str(size)) if v in values), "custom")
    custom = preset == "custom"
    return preset, gr.update(visible=custom, value=size.width), gr.update(visible=custom, value=size.height)


class ShapeOut(NamedTuple):
    """What a run that may change the canvas's shape refreshes (extend, open a photo): the viewer,
    the status, and the canvas and export fields once the run's view is out."""

    viewer: Any
    status: Any
    canvas: Any = gr.skip()
    canvas_w: Any = gr.skip()
    canvas_h: Any = gr.skip()
    export_w: Any = gr.skip()
    export_h: Any = gr.skip()

    @classmethod
    def shown(cls, viewer: Any, status: str, view: View) -> list[Any]:
        """With the fields showing ``view``'s canvas."""
        size = view.pyramid.size
        return list(cls(viewer, status, *canvas_fields(size), export_w=size.width, export_h=size.height))


def discard_upload(path: str) -> None:
    """Delete an upload Gradio cached, once read (only files under Gradio's cache directory)."""
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    file = Path(path).resolve()
    if file.is_relative_to(cache):
        file.unlink(missing_ok=True)


def viewer_box(b: Region) -> dict[str, Any]:
    """A box as the viewer draws it (``static/viewer.js``)."""
    return {"id": b.id, "x0": b.box.x0, "y0": b.box.y0, "x1": b.box.x1, "y1": b.box.y1, "kind": b.kind,
            "prompt": b.prompt, "weight": b.weight, "color": list(b.color) if b.color else None,
            "has_image": b.image is not None}


def viewer_value(s: Session, progress: tuple[int, int] | None = None) -> dict[str, Any]:
    """What the browser's viewer shows: the newest view of the session, its boxes, progress."""
    view = s.view
    image = None
    if view is not None:
        p = view.pyramid
        image = {"gen": view.gen, "width": p.width, "height": p.height, "tile": p.tile, "overlap": p.overlap,
                 "min_level": p.min_level, "max_level": p.max_level, "preview": view.preview}
    st = s.state
    return {"session": s.key, "image": image, "boxes": [viewer_box(b) for b in st.boxes], "selected": s.selected,
            "rev": s.client_rev, "progress": {"step": progress[0], "total": progress[1]} if progress else None}


def box_label(i: int, b: Region) -> str:
    return f"{i}. {b.kind}: {label(b)[:48]}" + (f"  ×{b.weight:g}" if b.weight != 1 else "")


def hex_to_rgb(value: str) -> tuple[float, float, float]:
    v = (value or "").strip().lstrip("#")
    try:
        if len(v) != 6:
            raise ValueError
        return (int(v[0:2], 16) / 255, int(v[2:4], 16) / 255, int(v[4:6], 16) / 255)
    except ValueError:
        raise ValueError(f"colour must be #rrggbb, got {value!r}") from None


def rgb_to_hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def number(value: Any, name: str, lo: float, hi: float, *, whole: bool = False) -> float:
    """A number in ``[lo, hi]`` (a whole one if ``whole``) from a UI field (:mod:`app.numbers`), or a
    gr.Error saying what is wrong."""
    try:
        return numbers.whole(value, name, int(lo), int(hi)) if whole else numbers.real(value, name, lo, hi)
    except ValueError as e:
        raise user_error(str(e)) from None


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
        coords = [geo.get(k) for k in ("x0", "y0", "x1", "y1")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coords):
            raise ValueError(f"box coordinates must be numbers, got {coords}")
        box = Box(*(float(v) for v in coords))
        if op == "add":
            if not isinstance(geo.get("id"), str) or not geo.get("id"):
                raise ValueError("a new box needs an id")
            s.commit(st.with_box(Region(box, id=geo.get("id"))))
            s.selected = geo.get("id")
            return True
        if op == "update":
            old = st.box(geo.get("id"))
            if old is None:
                raise ValueError("that box no longer exists")
            s.commit(st.with_box(replace(old, box=box)))
            return False
        raise ValueError(f"unknown edit {op!r}")


def commit_editor(s: Session, box_id: str | None, kind: str, prompt: str, weight: float, color: str,
                  placement: str = "hard", coarseness: Any = None) -> None:
    """Store the editor fields into box ``box_id`` (one undo step if anything changed). ``coarseness``
    applies to kinds that have it (None or the kind's default: the default)."""
    with s.lock:
        box = s.state.box(box_id) if box_id else None
        if box is None:
            return
        rgb = hex_to_rgb(color) if kind == "color" else box.color
        blocks = box.coarseness if kind == box.kind else None  # a new kind starts from its own default
        if "coarseness" in KINDS[kind].fields:
            blocks = None if coarseness in (None, "") else int(number(coarseness, "coarseness", 1, MAX_COARSENESS,
                                                                      whole=True))
            blocks = None if blocks == KINDS[kind].coarseness else blocks
        s.commit(s.state.with_box(replace(box, kind=kind, prompt=(prompt or "").strip(), weight=weight, color=rgb,
                                          placement=placement or "hard", coarseness=blocks)))


def kind_fields(kind: str, **values: Any) -> dict[str, Any]:
    """Editor updates for a box of ``kind``: its kind's fields (:attr:`infd_core.regions.Kind.fields`)
    shown (with ``values`` where given), every other kind's hidden."""
    shown = KINDS[kind].fields
    names = {f for k in KINDS.values() for f in k.fields}
    return {f: gr.update(visible=f in shown, **({"value": values[f]} if f in values else {})) for f in names}


def report_markdown(report: dict[str, Any] | None) -> str:
    """The guidance report as a short table: what each condition scored and how prompts were understood."""
    if not report:
        return ""
    margin = report["margin"]
    reach = "whole picture" if margin is None else f"near the boxes (margin {margin:g})"
    held = ", the rest of the picture held" if report.get("held") and margin is not None else ""
    lines = [f"**Guidance**: scorer `{report['scorer']}`, strength {report['scale']}, {reach}{held}", "",
             "| # | kind | what | result | changed (/255) |", "|---|---|---|---|---:|"]
    for i, r in enumerate(report["regions"]):
        what, result = summarize(r)
        lines.append(f"| {i} | {r['kind']} | {what} | {result} | {r.get('changed', '')} |")
    return "\n".join(lines)


class Handlers:
    """The UI's event handlers for one app (``ctx``: model, sessions, limits)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def session(self, key: Any) -> Session:
        try:
            return self.ctx.store.get(key)
        except SessionNotFound:
            raise user_error(EXPIRED) from None

    def panel(self, s: Session, refresh: str = "editor") -> Panel:
        """The canvas, the box list and (``refresh``: "editor" or "all") the editor.

        ``refresh``: "list" (viewer and box list only), "editor" (+ the editor) or "all" (+ the
        global prompt). The editor is refreshed only when the selection (or the whole state)
        changes, so the answer to a canvas edit never overwrites a prompt being typed.
        """
        st = s.state
        choices = [(box_label(i, b), b.id) for i, b in enumerate(st.boxes, 1)]
        out = Panel(*(gr.skip() for _ in Panel._fields))._replace(
            viewer=viewer_value(s), box_list=gr.update(choices=choices, value=s.selected))
        if refresh == "all":
            out = out._replace(global_prompt=st.global_prompt)
        if refresh == "list":
            return out
        b = st.box(s.selected) if s.selected else None
        if b is None:
            return out._replace(editing=None, editor=gr.update(visible=False))
        return out._replace(
            editing=b.id, editor=gr.update(visible=True), kind=b.kind, weight=b.weight,
            **kind_fields(b.kind, prompt=b.prompt, color=rgb_to_hex(b.color) if b.color else DEFAULT_COLOR,
                          image=b.image, placement=b.placement,
                          coarseness=b.coarseness or b.spec.coarseness or KINDS["sketch"].coarseness))

    # --- page and boxes ---------------------------------------------------------------------------
    def load(self, request: gr.Request) -> tuple[Any, ...]:
        """A new session for a new page: its key, then the :class:`Panel` (new sessions are
        limited per client address, ``Limits.sessions_per_minute``)."""
        try:
            s = self.ctx.store.create(canvas=Size(DEFAULT_CANVAS, DEFAULT_CANVAS), client=client_of(request))
        except TooManySessions as e:
            raise user_error(str(e)) from None
        return (s.key, *self.panel(s))

    def box_edit(self, key: str, evt: ViewerEvent) -> Panel:
        s = self.session(key)
        try:
            changed = apply_box_edit(s, evt.payload)
        except ValueError as e:
            gr.Warning(f"Box not changed: {e}")
            changed = True
        return self.panel(s, "editor" if changed else "list")

    def box_select(self, key: str, evt: ViewerEvent) -> Panel:
        return self.select(key, evt.payload.get("id"))

    def select(self, key: str, box_id: Any) -> Panel:
        s = self.session(key)
        s.selected = box_id if isinstance(box_id, str) and s.state.box(box_id) else None
        return self.panel(s)

    def history(self, key: str, evt: ViewerEvent) -> HistoryOut:
        return self.undo_redo(key, redo=evt.payload.get("action") == "redo")

    def undo_redo(self, key: str, redo: bool) -> HistoryOut:
        s = self.session(key)
        with s.lock:
            before = s.state.picture
            moved = s.redo() if redo else s.undo()
            after = s.state.picture
            k, n = s.picture_number()
        word = "Redone" if redo else "Undone"
        if not moved:
            status = "Nothing to redo." if redo else "Nothing to undo."
            gr.Info(status)
        elif after is before:
            status = f"{word}: a box or prompt edit."
        elif after is None:
            status = f"{word}: the canvas is empty."
        else:
            status = f"{word}: the picture is {after.label} (picture {k} of {n} in the history)."
        report = report_markdown(after.report) if after is not None and after.report else NO_REPORT
        return HistoryOut(*self.panel(s, "all"), status=status, report=report)

    def view_shown(self, key: str, evt: ViewerEvent) -> Any:
        """The viewer has a finished image fully on screen: the status a run left for that moment, if any."""
        s = self.session(key)
        with s.lock:
            waiting = s.shown_status
            if waiting is None or waiting[0] != evt.payload.get("gen"):
                return gr.skip()
            s.shown_status = None
        return waiting[1]

    def editor(self, *values: Any) -> Panel:
        """The editor's fields (:class:`EditorIn`) stored into its box."""
        e = EditorIn(*values)
        s = self.session(e.key)
        try:
            commit_editor(s, e.box_id, e.kind, e.prompt, number(e.weight, "weight", 0, 100), e.color, e.placement,
                          e.coarseness)
        except ValueError as err:
            raise user_error(f"Box not changed: {err}") from None
        # show the fields that belong to the (possibly new) kind, without touching their values
        return self.panel(s, "list")._replace(**kind_fields(e.kind))

    def reference_image(self, key: str, box_id: str | None, img: np.ndarray | None) -> Panel:
        s = self.session(key)
        with s.lock:
            box = s.state.box(box_id) if box_id else None
            if box is not None:
                try:
                    s.commit(s.state.with_box(replace(box, image=None if img is None else img[..., :3])))
                except ValueError as e:
                    raise user_error(f"Reference image not used: {e}") from None
        return self.panel(s, "list")

    def delete(self, key: str) -> Panel:
        s = self.session(key)
        if s.selected:
            apply_box_edit(s, {"op": "delete", "id": s.selected})
        return self.panel(s)

    def global_prompt(self, key: str, text: str) -> Panel:
        s = self.session(key)
        with s.lock:
            try:
                s.commit(replace(s.state, global_prompt=(text or "").strip()))
            except ValueError as e:
                raise user_error(f"Prompt not changed: {e}") from None
        return self.panel(s, "list")

    def canvas(self, key: str, choice: str, w: Any, h: Any) -> CanvasOut:
        s = self.session(key)
        side = self.ctx.limits.max_canvas_side
        custom = choice == "custom"
        if custom:
            width, height = (int(number(v, name, 16, side, whole=True)) for v, name in ((w, "width"), (h, "height")))
        elif "x" in str(choice):  # a panorama preset
            try:
                height, width = Size.parse(choice, "canvas")
            except ValueError as e:
                raise user_error(str(e)) from None
            width, height = (int(number(v, "canvas", 16, side, whole=True)) for v in (width, height))
        else:
            width = height = int(number(choice, "canvas", 16, side, whole=True))
        size = Size(height, width)
        s.set_canvas(size)
        return CanvasOut(viewer_value(s), gr.update(visible=custom, value=size.width),
                         gr.update(visible=custom, value=size.height), size.width, size.height)

    # --- generation ------------------------------------------------------------------------------
    def generate(self, *values: Any) -> Iterator[RunOut]:
        """Generate: :class:`RunIn` values."""
        yield from self._run(RunIn(*values), guided=False)

    def guided(self, *values: Any) -> Iterator[RunOut]:
        """Guided: :class:`RunIn` values."""
        yield from self._run(RunIn(*values), guided=True)

    def _run(self, run: RunIn, guided: bool) -> Iterator[RunOut]:
        """Yields the viewer, status and report per step (with previews) and at the end.

        The final status says "Done" only once the viewer shows the image (:meth:`view_shown`).
        """
        s = self.session(run.key)
        seed_i = int(number(run.seed, "seed", 0, numbers.MAX_SEED, whole=True))
        steps_i = int(number(run.steps, "steps", 1, 1000, whole=True))
        strength, weight = number(run.scale, "guidance strength", 0, 20), number(run.weight, "weight", 0, 100)
        local = bool(run.local)
        composed = None if guided else self.composition(s, run.composition, seed_i)
        try:  # the editor's fields may not have been applied yet (no blur before the click)
            e = EditorIn(*(getattr(run, f) for f in EditorIn._fields))
            commit_editor(s, e.box_id, e.kind, e.prompt, weight, e.color, e.placement, e.coarseness)
            with s.lock:
                s.commit(replace(s.state, global_prompt=(run.global_prompt or "").strip()))
            loading = guided and not self.ctx.scorer_loaded
            kind = "guided" if guided and s.state.picture is not None and local else (
                "guided, fresh" if guided else "unguided")
            clock = self.ctx.run_clock
            expected = clock.expect(kind, steps_i)
            about = f" (about {expected:.0f} s)" if expected is not None else ""
            yield RunOut(viewer_value(s, (0, steps_i)),
                         "Loading the guidance scorer (first time only)…" if loading else f"Generating…{about}",
                         gr.skip(), gr.skip())
            started = time.monotonic()
            for event in generate(self.ctx, s, seed=seed_i, steps=steps_i, guided=guided, scale=strength,
                                  local=local, composition=composed):
                if isinstance(event, Finished):
                    clock.record(kind, steps_i, time.monotonic() - started)
                    label = event.view.picture.label
                    s.shown_status = (event.view.gen, f"Done: {label}.")
                    yield RunOut(viewer_value(s), f"Generated {label}; loading the view…",
                                 report_markdown(event.report) or NO_REPORT,
                                 gr.Accordion(open=True) if event.report else gr.skip())
                else:
                    left = remaining(time.monotonic() - started, event.step, event.total)
                    yield RunOut(viewer_value(s, (event.step, event.total)),
                                 f"Step {event.step}/{event.total}{left}", gr.skip(), gr.skip())
        except (Busy, ValueError) as e:  # said on the status line and in a toast (an error would mark the status)
            log.info("user error: %s", e)
            gr.Warning(str(e))
            yield RunOut(viewer_value(s), f"Not generated: {e}", gr.skip(), gr.skip())
        except Cancelled:
            yield RunOut(viewer_value(s), "Cancelled; the previous image is back.", gr.skip(), gr.skip())
        except Exception as e:  # e.g. a scorer that cannot load: tell the user, keep serving
            log.exception("generation failed")
            yield RunOut(viewer_value(s), f"Generation failed: {e}", gr.skip(), gr.skip())
            raise user_error(f"Generation failed: {e}") from None

    @staticmethod
    def composition(s: Session, choice: Any, seed: int) -> Composition | None:
        """The Composition dropdown's choice for a Generate with ``seed``, or a gr.Error saying why not."""
        if choice in (None, "", NO_COMPOSITION):
            return None
        if choice == MY_SKETCH:
            sketch = s.state.sketch
            if sketch is None:
                raise user_error("There is no sketch yet: paint one in the Sketch tab and press *Use as "
                                 "composition* (or pick an example composition).")
            return Composition(sketch, "your sketch")
        name = compositions.example_for_seed(seed) if choice == RANDOM_EXAMPLE else choice
        try:
            return Composition(compositions.example(name), f"the example {name}")
        except ValueError as e:
            raise user_error(str(e)) from None

    # --- sketch ------------------------------------------------------------------------------------
    def use_sketch(self, key: str, value: Any) -> SketchOut:
        """Keep the editor's picture as the session's sketch (one undo step); Generate then holds it."""
        s = self.session(key)
        try:
            sketch = sketch_from_editor(value)
            with s.lock:
                s.commit(replace(s.state, sketch=sketch))
        except ValueError as e:
            raise user_error(f"Sketch not used: {e}") from None
        h, w = sketch.shape[:2]
        return SketchOut(MY_SKETCH, f"Sketch kept ({w}×{h}): *Generate* paints over it (Composition: my sketch).")

    @staticmethod
    def sketch_example(name: Any) -> dict[str, Any]:
        """An example composition in the sketch editor, to paint over."""
        try:
            return sketch_editor_value(compositions.example(str(name)))
        except ValueError as e:
            raise user_error(str(e)) from None

    def extend(self, key: str, side: str, amount: Any, seed: Any, steps: Any) -> Iterator[list[Any]]:
        """Outpaint the current picture by ``amount`` cells on ``side``: yields :class:`ShapeOut` per
        step and at the end (the canvas grows at the same pixel density)."""
        s = self.session(key)
        seed_i = int(number(seed, "seed", 0, numbers.MAX_SEED, whole=True))
        steps_i = int(number(steps, "steps", 1, 1000, whole=True))
        cells = int(number(amount, "cells", 8, 512, whole=True))
        try:
            yield list(ShapeOut(viewer_value(s, (0, steps_i)), f"Extending {side} by {cells} cells…"))
            for event in extend_picture(self.ctx, s, side=side, amount=cells, seed=seed_i, steps=steps_i):
                if isinstance(event, Finished):
                    label = event.view.picture.label
                    s.shown_status = (event.view.gen, f"Done: {label}.")
                    yield ShapeOut.shown(viewer_value(s), f"{label[0].upper()}{label[1:]}; loading the view…",
                                         event.view)
                else:
                    yield list(ShapeOut(viewer_value(s, (event.step, event.total)), f"Step {event.step}/{event.total}"))
        except (Busy, ValueError) as e:
            gr.Warning(str(e))
            yield list(ShapeOut(viewer_value(s), f"Not extended: {e}"))
        except Cancelled:
            yield list(ShapeOut(viewer_value(s), "Cancelled; the previous image is back."))

    def open_photo(self, key: str, path: str | None, refine: Any) -> Iterator[list[Any]]:
        """Open an uploaded photo as the session's picture: yields :class:`ShapeOut` (the canvas takes
        the photo's aspect)."""
        s = self.session(key)
        if not path:
            raise user_error("No image received.")
        steps = int(number(refine, "refine steps", 0, MAX_REFINE, whole=True))
        name = Path(path).name
        try:
            image = read_photo(path)
        except ValueError as e:  # the message names the upload's path on the server: show the name only
            raise user_error(f"Could not open the photo: {str(e).replace(str(path), name)}") from None
        finally:
            discard_upload(path)
        try:
            yield list(ShapeOut(gr.skip(), f"Encoding {name}…"))
            for event in open_photo(self.ctx, s, image, name, refine=steps):
                if isinstance(event, Finished):
                    s.shown_status = (event.view.gen, f"Opened {event.view.picture.label}.")
                    yield ShapeOut.shown(viewer_value(s), f"Encoded {event.view.picture.label}; loading the view…",
                                         event.view)
                else:
                    yield list(ShapeOut(viewer_value(s, (event.step, event.total)), f"Refining {event.step}/{event.total}"))
        except Busy as e:
            raise user_error(str(e)) from None
        except Cancelled:
            yield list(ShapeOut(viewer_value(s), "Cancelled; the previous image is back."))
        except Exception as e:
            log.exception("opening a photo failed")
            raise user_error(f"Opening the photo failed: {e}") from None

    def cancel(self, key: str) -> list[Any]:
        """Stop this session's run at its next step and wait until the previous image is back: [viewer, status]."""
        s = self.session(key)
        if not s.runner.cancel():
            return [gr.skip(), "Nothing to cancel."]
        return [viewer_value(s), "Cancelled; the previous image is back."]

    # --- files -----------------------------------------------------------------------------------
    def export(self, key: str, w: Any, h: Any, fmt: str, request: gr.Request = None) -> list[str]:
        """Check the request and hand the browser the export route to download: [url, link text]."""
        s = self.session(key)
        view = s.view
        if view is None:
            raise user_error("Generate an image first.")
        if view.preview:
            raise user_error("Wait for the generation to finish (or cancel it), then export.")
        side = self.ctx.limits.max_canvas_side
        width = int(number(w, "export width", 1, side, whole=True))
        size = Size(height=int(number(h, "export height", 1, side, whole=True)), width=width)
        try:
            self.ctx.check_export(size)
        except ValueError as e:
            raise user_error(str(e)) from None
        why = self.ctx.exports.refusal(client_of(request))  # the route would answer 429: say so where it is seen
        if why is not None:
            raise user_error(f"Not exported: {why}.")
        name = "image.png" if fmt == "PNG" else "deepzoom.zip"
        href = f"export/{s.key}/{view.gen}/{name}?width={size.width}&height={size.height}"
        return [href, f"Rendering [{name} ({size.width}×{size.height})]({href}) tile by tile; the download starts "
                      "when the first rows are ready."]

    def save(self, key: str) -> list[str]:
        s = self.session(key)
        href = f"session/{s.key}/infd-session.zip"
        return [href, f"[infd-session.zip]({href}): the image, boxes and prompts; load it with *Load session*."]

    def open(self, key: str, data: bytes | None) -> LoadOut:
        """Load a session file."""
        s = self.session(key)
        if not data:
            raise user_error("No file received.")
        try:
            loaded = self.ctx.load_session_file(data)
        except ValueError as e:
            raise user_error(f"Could not load the session file: {e}") from None
        with s.lock:
            s.selected = None
            s.commit(loaded.state, canvas=loaded.canvas)
        for warning in loaded.warnings:
            gr.Warning(warning)
        preset, canvas_w, canvas_h = canvas_fields(loaded.canvas)
        return LoadOut(*self.panel(s, "all"), canvas=preset, canvas_w=canvas_w, canvas_h=canvas_h,
                       export_w=loaded.canvas.width, export_h=loaded.canvas.height,
                       seed=loaded.seed if loaded.seed is not None else gr.skip(), status="Session loaded.")
