"""Per-user state of the app: the image, its boxes, undo/redo, the views the browser shows.

A :class:`Session` is addressed by an unguessable key (``secrets.token_urlsafe``); the tile
and export routes check it on every request, it is their only access control. What a user
can undo is a :class:`State` (the picture, the boxes, the global prompt); the viewer shows a
:class:`View` of a picture at a canvas size, numbered by a per-session generation counter
that appears in tile URLs, so tiles of a view never change and can be cached forever.

Many sessions are kept, within bounds, by :class:`app.store.SessionStore`.
"""
from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from infd_core.geometry import Box, Size, aspect_matches, aspect_size, canvas_size, cells_aspect_matches
from infd_core.regions import MAX_PROMPT, MAX_REGIONS, Region

from .deepzoom import Pyramid
from .runner import Runner

if TYPE_CHECKING:  # annotations only: the session data does not load the model code
    from infd_core.pipeline import Field, Pipeline

MAX_BOXES = MAX_REGIONS
KEY = re.compile(r"^[A-Za-z0-9_-]{32}$")
HISTORY = 100   # undo steps kept per session
KEEP_VIEWS = 12  # recent views whose tiles stay servable: more previews than a run publishes while one
#                 loads (Limits.preview_every apart), so the image on screen never disappears


class SessionNotFound(KeyError):
    """Unknown, malformed or expired session key."""


class Picture:
    """A latent ``[1, 3, h, w]`` (64 x 64, or a panorama's extent) and its decoded :class:`Field`,
    computed on first use and droppable. ``uid`` names the picture for good (tile caches key on it:
    the views of one picture at several canvas sizes, or again after an undo, share tiles).
    ``photo_aspect``: width / height of the photo an opened picture encodes (its latent holds it
    squashed square, like in training); None for a generated picture. ``report``: the guidance
    report of the run that made it (shown again when undo or redo comes back to it)."""

    def __init__(self, latent: Tensor, seed: int | None = None, label: str = "", photo_aspect: float | None = None,
                 report: dict | None = None):
        if photo_aspect is not None and not (isinstance(photo_aspect, (int, float)) and 0 < photo_aspect < math.inf):
            raise ValueError(f"photo_aspect must be a positive number, got {photo_aspect!r}")
        self.uid = uuid.uuid4().hex
        self.latent = latent.detach().cpu().float()
        self.seed = seed
        self.label = label
        self.photo_aspect = None if photo_aspect is None else float(photo_aspect)
        self.report = report
        self.last_used = time.monotonic()
        self._field: Field | None = None
        self._lock = threading.Lock()

    def field(self, pipe: Pipeline) -> tuple[Field, bool]:
        """The decoded field, and whether it was decoded just now."""
        with self._lock:
            self.last_used = time.monotonic()
            if self._field is not None:
                return self._field, False
            self._field = pipe.field(self.latent)
            return self._field, True

    def drop_field(self) -> None:
        with self._lock:
            self._field = None

    @property
    def cells(self) -> Size:
        """The latent's extent in cells."""
        return Size(int(self.latent.shape[-2]), int(self.latent.shape[-1]))

    @property
    def aspect(self) -> float:
        """Width / height it is meant to be seen at: its photo's, else its cells'."""
        h, w = self.cells
        return self.photo_aspect if self.photo_aspect is not None else w / h

    @property
    def field_bytes(self) -> int:
        f = self._field
        return f.phi.element_size() * f.phi.nelement() if f is not None else 0

    @property
    def nbytes(self) -> int:
        return self.latent.element_size() * self.latent.nelement() + self.field_bytes


@dataclass(frozen=True)
class State:
    """What undo/redo restores. ``sketch``: the user's painted composition ``[h, w, 3]`` uint8
    (Generate can hold it, see :mod:`infd_core.compositions`), never mutated."""

    picture: Picture | None = None
    boxes: tuple[Region, ...] = ()  # each with an id (the viewer's handle)
    global_prompt: str = ""
    sketch: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.global_prompt, str) or len(self.global_prompt) > MAX_PROMPT:
            raise ValueError(f"the global prompt must be a string of at most {MAX_PROMPT} characters")
        if self.sketch is not None:
            Region(Box(0, 0, 1, 1), "sketch", image=self.sketch)  # the same checks as a sketch box's picture

    def same_as(self, other: State) -> bool:
        if (self.picture is not other.picture or self.global_prompt != other.global_prompt
                or self.sketch is not other.sketch):
            return False
        return len(self.boxes) == len(other.boxes) and all(
            a.same_as(b) for a, b in zip(self.boxes, other.boxes, strict=True))

    def box(self, box_id: str) -> Region | None:
        return next((b for b in self.boxes if b.id == box_id), None)

    def with_box(self, box: Region) -> State:
        """Replace the box with the same id, or append it (at most :data:`MAX_BOXES`)."""
        if self.box(box.id) is not None:
            return replace(self, boxes=tuple(box if b.id == box.id else b for b in self.boxes))
        if len(self.boxes) >= MAX_BOXES:
            raise ValueError(f"at most {MAX_BOXES} boxes")
        return replace(self, boxes=self.boxes + (box,))

    def without_box(self, box_id: str) -> State:
        return replace(self, boxes=tuple(b for b in self.boxes if b.id != box_id))


@dataclass(frozen=True)
class View:
    """A picture shown at a canvas size under generation number ``gen`` (the tile URLs' version)."""

    gen: int
    picture: Picture
    pyramid: Pyramid
    preview: bool = False


@dataclass
class Session:
    """One user's canvas. Mutate only under ``lock``; ``runner`` runs the model for it, one run at a time."""

    key: str
    canvas: Size = Size(2048, 2048)
    history: list[State] = field(default_factory=lambda: [State()])
    index: int = 0
    views: OrderedDict[int, View] = field(default_factory=OrderedDict)
    gen: int = 0
    selected: str | None = None
    client_rev: int = 0  # last box edit received from the browser, echoed back (see viewer.js)
    shown_status: tuple[int, str] | None = None  # (gen, status): said once the viewer shows view gen
    last_seen: float = field(default_factory=time.monotonic)
    max_side: int = 65536  # the longest side a picture's aspect may grow the canvas to (set by the store: Limits.max_canvas_side)
    showing: list[tuple[int, int, int]] = field(default_factory=list)  # (level, x, y): the viewer's view, see show_tiles
    lock: threading.RLock = field(default_factory=threading.RLock)
    runner: Runner = field(default_factory=Runner)

    def __post_init__(self) -> None:
        self.canvas = Pyramid(*self.canvas).size  # validated; a Size

    # --- undoable state ---------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.history[self.index]

    def commit(self, state: State, canvas: Size | None = None) -> bool:
        """Make ``state`` current as a new undo step (no-op if nothing changed); publishes a new picture.
        ``canvas``: the size to show it at (a loaded session's), the picture published once."""
        with self.lock:
            resized = canvas is not None and self._resize(canvas)
            if state.same_as(self.state):
                if resized and self.state.picture is not None:
                    self.publish(self.state.picture)
                return False
            del self.history[self.index + 1:]
            self.history.append(state)
            if len(self.history) > HISTORY:
                del self.history[0]
            self.index = len(self.history) - 1
            self._show_current_picture(force=resized)
            return True

    def undo(self) -> bool:
        return self._move(-1)

    def redo(self) -> bool:
        return self._move(+1)

    def _move(self, step: int) -> bool:
        with self.lock:
            if not 0 <= self.index + step < len(self.history):
                return False
            self.index += step
            if self.selected is not None and self.state.box(self.selected) is None:
                self.selected = None
            self._show_current_picture()
            return True

    # --- views --------------------------------------------------------------------------------
    @property
    def view(self) -> View | None:
        """The newest view (what the viewer should show)."""
        with self.lock:
            return next(reversed(self.views.values()), None)

    def get_view(self, gen: int) -> View | None:
        with self.lock:
            return self.views.get(gen)

    def publish(self, picture: Picture, preview: bool = False) -> View:
        """Show ``picture`` (at the current canvas size, or one of the picture's aspect at the shown
        picture's pixel density when the two differ: after an extension, or its undo) under a new
        generation number."""
        with self.lock:
            self._fit_canvas(picture, preview)
            self.gen += 1
            view = View(self.gen, picture, Pyramid(*self.canvas), preview)
            self.views[view.gen] = view
            while len(self.views) > KEEP_VIEWS:
                self.views.popitem(last=False)
            return view

    def _fit_canvas(self, picture: Picture, preview: bool = False) -> None:
        """A picture of another extent than the shown one (an extension, or its undo) gets a canvas of
        its aspect at the shown picture's pixels per cell. A picture of the same extent but another
        :attr:`Picture.aspect` (an opened photo, or the undo of its opening; not a preview) gets one of
        its aspect with the same longest side. A canvas the user picked is left alone."""
        cells, shown = picture.cells, self.view
        if shown is not None and shown.picture.cells != cells:
            if cells_aspect_matches(cells, *self.canvas):
                return
            per_cell = shown.pyramid.height / shown.picture.cells[0]
            size = canvas_size(cells, max(1, round(per_cell * 64)))
            shrink = max(1.0, size.longest / self.max_side)
            self.canvas = Size(*(max(16, round(v / shrink)) for v in size))
            return
        same = shown.picture.aspect == picture.aspect if shown is not None else picture.photo_aspect is None
        if preview or same or aspect_matches(picture.aspect, *self.canvas):
            return
        self.canvas = Size(*(max(16, v) for v in aspect_size(picture.aspect, self.canvas.longest)))

    def show_tiles(self, tiles: list[tuple[int, int, int]]) -> None:
        """The viewer's view needs these tile positions (any picture at this canvas size): a new
        picture's tiles are rendered there before the viewer asks (:meth:`AppContext.prerender`)."""
        with self.lock:
            self.showing = list(tiles)

    def set_canvas(self, size: Size) -> None:
        with self.lock:
            if self._resize(size) and self.state.picture is not None:
                self.publish(self.state.picture)

    def _resize(self, size: Size) -> bool:
        """Set the canvas size (validated); whether it changed."""
        size = Pyramid(*size).size  # validates
        changed = size != self.canvas
        self.canvas = size
        return changed

    def restore_view(self) -> None:
        """Show the current state's picture again (after previews of a cancelled or failed run)."""
        with self.lock:
            view = self.view
            if view is not None and (view.preview or view.picture is not self.state.picture):
                self._show_current_picture(force=True)

    def _show_current_picture(self, force: bool = False) -> None:
        pic, view = self.state.picture, self.view
        if pic is None:
            self.views.clear()  # e.g. the first generation undone: an empty canvas
        elif force or view is None or view.picture is not pic:
            self.publish(pic)

    def picture_number(self) -> tuple[int, int]:
        """``(k, n)``: the current picture is the k-th of the n distinct pictures in the undo history
        (0 if there is none), so that two pictures of one label can be told apart."""
        with self.lock:
            seen: list[Picture] = []
            for st in self.history:
                if st.picture is not None and all(st.picture is not p for p in seen):
                    seen.append(st.picture)
            pic = self.state.picture
            return (next((i + 1 for i, p in enumerate(seen) if p is pic), 0), len(seen))

    def pictures(self) -> set[Picture]:
        with self.lock:
            pics = {s.picture for s in self.history if s.picture is not None}
            return pics | {v.picture for v in self.views.values()}

    @property
    def nbytes(self) -> int:
        with self.lock:
            images = {id(b.image): b.image.nbytes for s in self.history for b in s.boxes if b.image is not None}
            images |= {id(s.sketch): s.sketch.nbytes for s in self.history if s.sketch is not None}
        return sum(p.nbytes for p in self.pictures()) + sum(images.values())
