"""Per-user state of the app: the image, its boxes, undo/redo, and bounded storage of many sessions.

A :class:`Session` is addressed by an unguessable key (``secrets.token_urlsafe``); the tile
and export routes check it on every request, it is their only access control. What a user
can undo is a :class:`State` (the picture, the boxes, the global prompt); the viewer shows a
:class:`View` of a picture at a canvas size, numbered by a per-session generation counter
that appears in tile URLs, so tiles of a view never change and can be cached forever.

Memory: a session's latents are small (48 KB each); its decoded fields are not (8-32 MB), so the
:class:`SessionStore` first drops fields of the least recently used pictures (they are decoded
again on demand), then whole sessions by idle age, count and bytes.
"""
from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import Tensor

from infd_core.pipeline import Field, Pipeline

from .deepzoom import Pyramid

KINDS = ("text", "image", "color", "keep")
MAX_BOXES = 16
MAX_PROMPT = 500
MAX_WEIGHT = 100.0
BOX_ID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")
KEY = re.compile(r"^[A-Za-z0-9_-]{32}$")
HISTORY = 100   # undo steps kept per session
KEEP_VIEWS = 12  # recent views whose tiles stay servable: more than one run's previews (generate.PREVIEWS),
#                 so the image on screen while a new one loads never disappears


class SessionNotFound(KeyError):
    """Unknown, malformed or expired session key."""


@dataclass(frozen=True, eq=False)
class BoxSpec:
    """One box drawn on the canvas: a rectangle in image fractions with its condition (see infd_core.guidance)."""

    id: str
    x0: float
    y0: float
    x1: float
    y1: float
    kind: str = "text"
    prompt: str = ""
    weight: float = 1.0
    color: tuple[float, float, float] | None = None
    image: np.ndarray | None = None  # reference patch for kind "image", [h, w, 3] uint8

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not BOX_ID.match(self.id):
            raise ValueError(f"box id must be 1-24 letters, digits, '_' or '-', got {self.id!r}")
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coords):
            raise ValueError(f"box coordinates must be finite numbers, got {coords}")
        if not (0 <= self.x0 < self.x1 <= 1 and 0 <= self.y0 < self.y1 <= 1):
            raise ValueError(f"box must lie in [0, 1] with x0 < x1 and y0 < y1, got {coords}")
        if self.kind not in KINDS:
            raise ValueError(f"box kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.prompt, str) or len(self.prompt) > MAX_PROMPT:
            raise ValueError(f"prompt must be a string of at most {MAX_PROMPT} characters")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and 0 <= w <= MAX_WEIGHT):
            raise ValueError(f"weight must be a number in [0, {MAX_WEIGHT}], got {w!r}")
        if self.color is not None and not (len(self.color) == 3 and all(0 <= c <= 1 for c in self.color)):
            raise ValueError(f"color must be three numbers in [0, 1], got {self.color!r}")
        if self.image is not None and not (isinstance(self.image, np.ndarray) and self.image.ndim == 3
                                           and self.image.shape[2] == 3 and self.image.dtype == np.uint8):
            raise ValueError("reference image must be an [h, w, 3] uint8 array")

    def same_as(self, other: BoxSpec) -> bool:
        """Value equality (the reference image compared by identity: it is never mutated)."""
        fields = ("id", "x0", "y0", "x1", "y1", "kind", "prompt", "weight", "color")
        return all(getattr(self, f) == getattr(other, f) for f in fields) and self.image is other.image

    def to_json(self) -> dict[str, Any]:
        """The JSON form (viewer, session files); the reference image is only flagged."""
        return {"id": self.id, "x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1, "kind": self.kind,
                "prompt": self.prompt, "weight": self.weight,
                "color": list(self.color) if self.color is not None else None, "has_image": self.image is not None}

    @classmethod
    def from_json(cls, data: Any, image: np.ndarray | None = None) -> BoxSpec:
        """Inverse of :meth:`to_json`; raises ValueError on anything malformed."""
        if not isinstance(data, dict):
            raise ValueError("a box must be a JSON object")
        try:
            color = data.get("color")
            return cls(id=data["id"], x0=data["x0"], y0=data["y0"], x1=data["x1"], y1=data["y1"],
                       kind=data.get("kind", "text"), prompt=data.get("prompt", ""), weight=data.get("weight", 1.0),
                       color=tuple(color) if isinstance(color, list) else color, image=image)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed box: {e}") from e


class Picture:
    """A latent ``[1, 3, 64, 64]`` and its decoded :class:`Field`, computed on first use and droppable."""

    def __init__(self, latent: Tensor, seed: int | None = None, label: str = ""):
        self.latent = latent.detach().cpu().float()
        self.seed = seed
        self.label = label
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
    def field_bytes(self) -> int:
        f = self._field
        return f.phi.element_size() * f.phi.nelement() if f is not None else 0

    @property
    def nbytes(self) -> int:
        return self.latent.element_size() * self.latent.nelement() + self.field_bytes


@dataclass(frozen=True)
class State:
    """What undo/redo restores."""

    picture: Picture | None = None
    boxes: tuple[BoxSpec, ...] = ()
    global_prompt: str = ""

    def same_as(self, other: State) -> bool:
        if self.picture is not other.picture or self.global_prompt != other.global_prompt:
            return False
        return len(self.boxes) == len(other.boxes) and all(
            a.same_as(b) for a, b in zip(self.boxes, other.boxes, strict=True))

    def box(self, box_id: str) -> BoxSpec | None:
        return next((b for b in self.boxes if b.id == box_id), None)

    def with_box(self, box: BoxSpec) -> State:
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
    """One user's canvas. Mutate only under ``lock``; ``busy`` is held while the model samples for it."""

    key: str
    canvas: tuple[int, int] = (2048, 2048)
    history: list[State] = field(default_factory=lambda: [State()])
    index: int = 0
    views: OrderedDict[int, View] = field(default_factory=OrderedDict)
    gen: int = 0
    selected: str | None = None
    client_rev: int = 0  # last box edit received from the browser, echoed back (see viewer.js)
    last_seen: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    busy: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)

    # --- undoable state ---------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.history[self.index]

    def commit(self, state: State) -> bool:
        """Make ``state`` current as a new undo step (no-op if nothing changed); publishes a new picture."""
        with self.lock:
            if state.same_as(self.state):
                return False
            del self.history[self.index + 1:]
            self.history.append(state)
            if len(self.history) > HISTORY:
                del self.history[0]
            self.index = len(self.history) - 1
            self._show_current_picture()
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
        """Show ``picture`` (at the current canvas size) under a new generation number."""
        with self.lock:
            self.gen += 1
            view = View(self.gen, picture, Pyramid(*self.canvas), preview)
            self.views[view.gen] = view
            while len(self.views) > KEEP_VIEWS:
                self.views.popitem(last=False)
            return view

    def set_canvas(self, width: int, height: int) -> None:
        with self.lock:
            Pyramid(width, height)  # validates
            if (width, height) != self.canvas:
                self.canvas = (width, height)
                if self.state.picture is not None:
                    self.publish(self.state.picture)

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

    def pictures(self) -> set[Picture]:
        with self.lock:
            pics = {s.picture for s in self.history if s.picture is not None}
            return pics | {v.picture for v in self.views.values()}

    @property
    def nbytes(self) -> int:
        with self.lock:
            images = {id(b.image): b.image.nbytes for s in self.history for b in s.boxes if b.image is not None}
        return sum(p.nbytes for p in self.pictures()) + sum(images.values())


class SessionStore:
    """All sessions, by key; thread-safe; bounded by count, idle age and bytes (fields first)."""

    def __init__(self, max_sessions: int = 64, ttl: float = 2 * 3600, max_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.ttl, self.max_bytes = max_sessions, ttl, max_bytes
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, canvas: tuple[int, int] = (2048, 2048)) -> Session:
        session = Session(secrets.token_urlsafe(24), canvas=canvas, last_seen=self._clock())
        with self._lock:
            self._sessions[session.key] = session
        self.enforce(keep=session.key)
        return session

    def get(self, key: Any) -> Session:
        """The live session with this key (marked as used); SessionNotFound otherwise."""
        if not isinstance(key, str) or not KEY.match(key):
            raise SessionNotFound("malformed session key")
        with self._lock:
            session = self._sessions.get(key)
        if session is None:
            raise SessionNotFound("unknown or expired session")
        session.last_seen = self._clock()
        return session

    def delete(self, key: Any) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def field(self, session: Session, view: View, pipe: Pipeline) -> Field:
        """The view's decoded field (decoding it if needed, then re-checking the byte budget)."""
        fld, new = view.picture.field(pipe)
        if new:
            self.enforce(keep=session.key)
        return fld

    def enforce(self, keep: str | None = None) -> None:
        """Evict idle sessions, then the oldest beyond ``max_sessions``, then fields/sessions beyond ``max_bytes``.

        Sessions that are sampling, and ``keep``, are never evicted.
        """
        now = self._clock()
        with self._lock:
            by_age = sorted(self._sessions.values(), key=lambda s: s.last_seen)
            evictable = [s for s in by_age if s.key != keep and not s.busy.locked()]
            for s in evictable:
                if now - s.last_seen > self.ttl or len(self._sessions) > self.max_sessions:
                    del self._sessions[s.key]
            live = list(self._sessions.values())
        sizes = {s.key: s.nbytes for s in live}
        total = sum(sizes.values())
        if total <= self.max_bytes:
            return
        pictures = sorted({p for s in live for p in s.pictures() if p.field_bytes}, key=lambda p: p.last_used)
        for p in pictures:
            if total <= self.max_bytes:
                return
            total -= p.field_bytes
            p.drop_field()
        with self._lock:
            for s in evictable:
                if total <= self.max_bytes:
                    break
                if self._sessions.pop(s.key, None) is not None:
                    total -= sizes.get(s.key, 0)
