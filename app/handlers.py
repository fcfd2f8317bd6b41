"""What the UI's events do: read and change a session, and say what the page should show next.

:class:`Handlers` methods are wired to components in :mod:`app.ui`; each returns the values of
its outputs in the order wired there (:meth:`Handlers.panel` for the common set). Bad input never raises
anything but ``gr.Error`` (shown to the user; the session is left as it was).

The browser talks to the viewer through :func:`viewer_value` (Python -> browser) and the
viewer's events ``box_edit``, ``box_select`` and ``history`` (see ``static/viewer.js``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from infd_core.images import read_photo

from .context import AppContext
from .generate import Busy, Cancelled, Finished, generate, open_photo
from .sessionfile import load as load_session_file
from .sessions import BoxSpec, Session, SessionNotFound

log = logging.getLogger(__name__)

CANVAS_PRESETS = [("1024²", "1024"), ("2048²", "2048"), ("4096²", "4096"), ("8192²", "8192"), ("custom", "custom")]
DEFAULT_CANVAS = 2048
DEFAULT_COLOR = "#d04030"
MAX_REFINE = 500
EXPIRED = "Your session has expired (idle too long or the server restarted). Reload the page to start a new one."


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
    detail = {"text": b.prompt or "(no prompt yet)",
              "image": "reference image" if b.image is not None else "(no image)",
              "color": rgb_to_hex(b.color) if b.color else "(no colour)",
              "keep": "keep what is there"}[b.kind]
    return f"{i}. {b.kind}: {detail[:48]}" + (f"  ×{b.weight:g}" if b.weight != 1 else "")


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
    """A number in ``[lo, hi]`` (a whole one if ``whole``) from a UI field, or a gr.Error saying what is wrong."""
    kind = "a whole number" if whole else "a number"
    if isinstance(value, str):
        value = value.strip()
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be {kind}, got {value!r}") from None
    if not math.isfinite(f) or (whole and f != int(f)) or not lo <= f <= hi:
        raise gr.Error(f"{name} must be {kind} from {lo:g} to {hi:g}, got {value!r}")
    return int(f) if whole else f


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
        rgb = hex_to_rgb(color) if kind == "color" else box.color
        s.commit(s.state.with_box(replace(box, kind=kind, prompt=(prompt or "").strip(), weight=weight, color=rgb)))


def report_markdown(report: dict[str, Any] | None) -> str:
    """The guidance report as a short table: what each condition scored and how prompts were understood."""
    if not report:
        return ""
    margin = report.get("margin")
    reach = "whole picture" if margin is None else f"near the boxes (margin {margin:g})"
    lines = [f"**Guidance**: scorer `{report.get('scorer')}`, strength {report.get('scale')}, {reach}", "",
             "| # | kind | prompt | understood as | loss |", "|---|---|---|---|---|"]
    for i, r in enumerate(report.get("regions", [])):
        understood = r.get("understood_as", "")
        if r.get("known") is False:
            understood = f"⚠ {understood}"
        lines.append(f"| {i} | {r.get('kind')} | {r.get('prompt', '')} | {understood} | {r.get('loss', 0):.3f} |")
    return "\n".join(lines)


class Handlers:
    """The UI's event handlers for one app (``ctx``: model, sessions, limits)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def session(self, key: Any) -> Session:
        try:
            return self.ctx.store.get(key)
        except SessionNotFound:
            raise gr.Error(EXPIRED) from None

    def panel(self, s: Session, refresh: str = "editor") -> list[Any]:
        """[viewer, box list, editing, editor group, kind, prompt, weight, colour, image, global prompt].

        ``refresh``: "list" (viewer and box list only), "editor" (+ the editor) or "all".

        The editor is refreshed only when the selection (or the whole state) changes, so the answer
        to a canvas edit never overwrites a prompt being typed.
        """
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
                    b.weight, gr.update(value=rgb_to_hex(b.color) if b.color else DEFAULT_COLOR,
                                        visible=b.kind == "color"),
                    gr.update(value=b.image, visible=b.kind == "image")]
        return out + [st.global_prompt if refresh == "all" else gr.skip()]

    # --- page and boxes ---------------------------------------------------------------------------
    def load(self) -> list[Any]:
        """A new session for a new page: [key, *panel]."""
        s = self.ctx.store.create(canvas=(DEFAULT_CANVAS, DEFAULT_CANVAS))
        return [s.key, *self.panel(s)]

    def box_edit(self, key: str, evt: gr.EventData) -> list[Any]:
        s = self.session(key)
        try:
            changed = apply_box_edit(s, evt._data)
        except ValueError as e:
            gr.Warning(f"Box not changed: {e}")
            changed = True
        return self.panel(s, "editor" if changed else "list")

    def box_select(self, key: str, evt: gr.EventData) -> list[Any]:
        data = evt._data if isinstance(evt._data, dict) else {}
        return self.select(key, data.get("id"))

    def select(self, key: str, box_id: Any) -> list[Any]:
        s = self.session(key)
        s.selected = box_id if isinstance(box_id, str) and s.state.box(box_id) else None
        return self.panel(s)

    def history(self, key: str, evt: gr.EventData) -> list[Any]:
        data = evt._data if isinstance(evt._data, dict) else {}
        return self.undo_redo(key, redo=data.get("action") == "redo")

    def undo_redo(self, key: str, redo: bool) -> list[Any]:
        s = self.session(key)
        if not (s.redo() if redo else s.undo()):
            gr.Info("Nothing to redo." if redo else "Nothing to undo.")
        return self.panel(s, "all")

    def editor(self, key: str, box_id: str | None, kind: str, prompt: str, weight: Any, color: str) -> list[Any]:
        s = self.session(key)
        try:
            commit_editor(s, box_id, kind, prompt, number(weight, "weight", 0, 100), color)
        except ValueError as e:
            raise gr.Error(f"Box not changed: {e}") from None
        out = self.panel(s, "list")
        # show the fields that belong to the (possibly new) kind, without touching their values
        out[5:9] = [gr.update(visible=kind == "text"), gr.skip(), gr.update(visible=kind == "color"),
                    gr.update(visible=kind == "image")]
        return out

    def reference_image(self, key: str, box_id: str | None, img: np.ndarray | None) -> list[Any]:
        s = self.session(key)
        with s.lock:
            box = s.state.box(box_id) if box_id else None
            if box is not None:
                try:
                    s.commit(s.state.with_box(replace(box, image=None if img is None else img[..., :3])))
                except ValueError as e:
                    raise gr.Error(f"Reference image not used: {e}") from None
        return self.panel(s, "list")

    def delete(self, key: str) -> list[Any]:
        s = self.session(key)
        if s.selected:
            apply_box_edit(s, {"op": "delete", "id": s.selected})
        return self.panel(s)

    def global_prompt(self, key: str, text: str) -> list[Any]:
        s = self.session(key)
        with s.lock:
            s.commit(replace(s.state, global_prompt=(text or "").strip()))
        return self.panel(s, "list")

    def canvas(self, key: str, choice: str, w: Any, h: Any) -> list[Any]:
        """[viewer, canvas width, canvas height, export width, export height]."""
        s = self.session(key)
        side = self.ctx.limits.max_canvas_side
        if choice == "custom":
            width = int(number(w, "width", 16, side, whole=True))
            height = int(number(h, "height", 16, side, whole=True))
        else:
            width = height = int(number(choice, "canvas", 16, side, whole=True))
        s.set_canvas(width, height)
        custom = choice == "custom"
        return [viewer_value(s), gr.update(visible=custom, value=width), gr.update(visible=custom, value=height),
                width, height]

    # --- generation ------------------------------------------------------------------------------
    def generate(self, *args: Any) -> Iterator[list[Any]]:
        yield from self._run(*args, guided=False)

    def guided(self, *args: Any) -> Iterator[list[Any]]:
        yield from self._run(*args, guided=True)

    def _run(self, key: str, seed: Any, steps: Any, scale: Any, local: Any, box_id: str | None, kind: str,
             prompt: str, weight: Any, color: str, global_: str, guided: bool) -> Iterator[list[Any]]:
        """Yields [viewer, status, report] per step (with previews) and at the end."""
        s = self.session(key)
        seed_i = int(number(seed, "seed", 0, 2**32 - 1, whole=True))
        steps_i = int(number(steps, "steps", 1, 1000, whole=True))
        strength, weight = number(scale, "guidance strength", 0, 20), number(weight, "weight", 0, 100)
        try:  # the editor's fields may not have been applied yet (no blur before the click)
            commit_editor(s, box_id, kind, prompt, weight, color)
            with s.lock:
                s.commit(replace(s.state, global_prompt=(global_ or "").strip()))
            loading = guided and not self.ctx.scorer_loaded
            yield [viewer_value(s, (0, steps_i)),
                   "Loading the guidance scorer (first time only)…" if loading else "Generating…", gr.skip()]
            for event in generate(self.ctx, s, seed=seed_i, steps=steps_i, guided=guided, scale=strength,
                                  local=bool(local)):
                if isinstance(event, Finished):
                    yield [viewer_value(s), f"Done: {event.view.picture.label}.", report_markdown(event.report)]
                else:
                    yield [viewer_value(s, (event.step, event.total)), f"Step {event.step}/{event.total}", gr.skip()]
        except (Busy, ValueError) as e:
            raise gr.Error(str(e)) from None
        except Cancelled:
            yield [viewer_value(s), "Cancelled; the previous image is back.", gr.skip()]
        except Exception as e:  # e.g. a scorer that cannot load: tell the user, keep serving
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {e}") from None

    def open_photo(self, key: str, path: str | None, refine: Any) -> Iterator[list[Any]]:
        """Open an uploaded photo as the session's picture: yields [viewer, status]."""
        s = self.session(key)
        if not path:
            raise gr.Error("No image received.")
        steps = int(number(refine, "refine steps", 0, MAX_REFINE, whole=True))
        try:
            image = read_photo(path)
        except ValueError as e:
            raise gr.Error(f"Could not open the photo: {e}") from None
        name = Path(path).name
        try:
            yield [gr.skip(), f"Encoding {name}…"]
            for event in open_photo(self.ctx, s, image, name, refine=steps):
                if isinstance(event, Finished):
                    yield [viewer_value(s), f"Opened {event.view.picture.label}."]
                else:
                    yield [viewer_value(s, (event.step, event.total)), f"Refining {event.step}/{event.total}"]
        except Busy as e:
            raise gr.Error(str(e)) from None
        except Cancelled:
            yield [viewer_value(s), "Cancelled; the previous image is back."]
        except Exception as e:
            log.exception("opening a photo failed")
            raise gr.Error(f"Opening the photo failed: {e}") from None

    def cancel(self, key: str) -> list[Any]:
        """Stop this session's run at its next step and wait until the previous image is back: [viewer, status]."""
        s = self.session(key)
        if not s.busy.locked():
            return [gr.skip(), "Nothing to cancel."]
        s.cancel.set()
        if s.busy.acquire(timeout=120):
            s.busy.release()
        return [viewer_value(s), "Cancelled; the previous image is back."]

    # --- files -----------------------------------------------------------------------------------
    def export(self, key: str, w: Any, h: Any, fmt: str) -> list[str]:
        """Check the request and hand the browser the export route to download: [url, link text]."""
        s = self.session(key)
        view = s.view
        if view is None:
            raise gr.Error("Generate an image first.")
        if view.preview:
            raise gr.Error("Wait for the generation to finish (or cancel it), then export.")
        side = self.ctx.limits.max_canvas_side
        width = int(number(w, "export width", 1, side, whole=True))
        height = int(number(h, "export height", 1, side, whole=True))
        try:
            self.ctx.check_export(width, height)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        name = "image.png" if fmt == "PNG" else "deepzoom.zip"
        href = f"export/{s.key}/{view.gen}/{name}?width={width}&height={height}"
        return [href, f"Rendering [{name} ({width}×{height})]({href}) tile by tile; the download starts "
                      "when the first rows are ready."]

    def save(self, key: str) -> list[str]:
        s = self.session(key)
        href = f"session/{s.key}/infd-session.zip"
        return [href, f"[infd-session.zip]({href}): the image, boxes and prompts; load it with *Load session*."]

    def open(self, key: str, data: bytes | None) -> list[Any]:
        """Load a session file: [*panel, canvas preset, width, height, seed, status]."""
        s = self.session(key)
        if not data:
            raise gr.Error("No file received.")
        try:
            loaded = load_session_file(data, self.ctx.pipe, self.ctx.limits.max_canvas_side)
        except ValueError as e:
            raise gr.Error(f"Could not load the session file: {e}") from None
        with s.lock:
            s.selected = None
            s.set_canvas(*loaded.canvas)
            s.commit(loaded.state)
        for warning in loaded.warnings:
            gr.Warning(warning)
        w, h = loaded.canvas
        preset = str(w) if w == h and str(w) in dict(CANVAS_PRESETS).values() else "custom"
        return [*self.panel(s, "all"), preset, w, h, loaded.seed if loaded.seed is not None else gr.skip(),
                "Session loaded."]
