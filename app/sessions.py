"""Per-user state of the app: the image, its boxes, undo/redo, and bounded storage of many sessions.

A :class:`Session` is addressed by an unguessable key (``secrets.token_urlsafe``); the tile
and export routes check it on every request, it is their only access control. What a user
can undo is a :class:`State` (the picture, the boxes, the global prompt); the viewer shows a
:class:`View` of a picture at a canvas size, numbered by a per-session generation counter
that appears in tile URLs, so tiles of a view never change and can be cached forever.

Memory: a session's latents are small (48 KB each); its decoded fields are not (8-32 MB), so the
:class:`SessionStore` first drops fields of the least recently used pictures (they are decoded
again on demand), then spills the least recently seen sessions to disk (:mod:`app.spill`) and
restores them on their next request.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from infd_core.layout import MAX_PROMPT, MAX_REGIONS, Region
from infd_core.pipeline import Field, Pipeline

from .deepzoom import Pyramid
from . import spill
from .runner import Runner
from .spill import SpillDir

log = logging.getLogger(__name__)

MAX_BOXES = MAX_REGIONS
KEY = re.compile(r"^[A-Za-z0-9_-]{32}$")
HISTORY = 100   # undo steps kept per session
KEEP_VIEWS = 12  # recent views whose tiles stay servable: more than one run's previews (generate.PREVIEWS),
#                 so the image on screen while a new one loads never disappears
RATE_WINDOW = 60.0  # seconds over which new sessions per client address are counted
RATE_TABLE = 4096  # client addresses remembered before the quiet ones are forgotten


class SessionNotFound(KeyError):
    """Unknown, malformed or expired session key."""


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
    boxes: tuple[Region, ...] = ()  # each with an id (the viewer's handle)
    global_prompt: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.global_prompt, str) or len(self.global_prompt) > MAX_PROMPT:
            raise ValueError(f"the global prompt must be a string of at most {MAX_PROMPT} characters")

    def same_as(self, other: State) -> bool:
        if self.picture is not other.picture or self.global_prompt != other.global_prompt:
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
    canvas: tuple[int, int] = (2048, 2048)
    history: list[State] = field(default_factory=lambda: [State()])
    index: int = 0
    views: OrderedDict[int, View] = field(default_factory=OrderedDict)
    gen: int = 0
    selected: str | None = None
    client_rev: int = 0  # last box edit received from the browser, echoed back (see viewer.js)
    shown_status: tuple[int, str] | None = None  # (gen, status): said once the viewer shows view gen
    last_seen: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    runner: Runner = field(default_factory=Runner)

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


class TooManySessions(RuntimeError):
    """A client address asked for more new sessions in a minute than the store allows."""


class SessionStore:
    """All sessions, by key; thread-safe; nothing lost silently when its limits bite.

    In memory there are at most ``max_sessions`` sessions and ``max_bytes`` of pictures: decoded
    fields of the least recently used pictures are dropped first (decoded again on demand), then
    the least recently seen sessions are spilled to disk (:mod:`app.spill`) and :meth:`get`
    restores them, boxes and undo history included, on their next request. Sessions (in memory
    or on disk) idle for ``ttl`` expire; beyond ``max_spilled`` on disk the least recently seen
    are deleted with a log line. :meth:`create` admits ``per_minute`` new sessions per client
    address. Sessions that are running the model, and ``keep``, are never spilled.

    A handler that still holds a session object after it was spilled would change an orphan; the
    least recently seen go first, so that takes ``max_sessions`` other sessions being used within
    one request of that handler.
    """

    def __init__(self, max_sessions: int = 64, ttl: float = 2 * 3600, max_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.monotonic, *, max_spilled: int = 4096, per_minute: int = 30):
        self.max_sessions, self.ttl, self.max_bytes = max_sessions, ttl, max_bytes
        self.max_spilled, self.per_minute = max_spilled, per_minute
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._spilled: dict[str, float] = {}  # key -> last_seen of the sessions on disk
        self._disk = SpillDir()
        self._created: dict[str, deque[float]] = {}  # client address -> its creations in the last minute
        self._lock = threading.Lock()

    def create(self, canvas: tuple[int, int] = (2048, 2048), client: str | None = None) -> Session:
        """A new session; TooManySessions if ``client`` (an address) has created too many this minute."""
        if client is not None:
            self._admit(client)
        session = Session(secrets.token_urlsafe(24), canvas=canvas, last_seen=self._clock())
        with self._lock:
            self._sessions[session.key] = session
        self.enforce(keep=session.key)
        return session

    def _admit(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._created) > RATE_TABLE:  # forget addresses quiet for a minute
                self._created = {c: t for c, t in self._created.items() if t and now - t[-1] < RATE_WINDOW}
            times = self._created.setdefault(client, deque())
            while times and now - times[0] >= RATE_WINDOW:
                times.popleft()
            if len(times) >= self.per_minute:
                raise TooManySessions("too many new sessions from your address; wait a minute and reload the page")
            times.append(now)

    def get(self, key: Any) -> Session:
        """The session with this key (marked as used; restored from disk if it was spilled);
        SessionNotFound otherwise."""
        if not isinstance(key, str) or not KEY.match(key):
            raise SessionNotFound("malformed session key")
        with self._lock:
            session = self._sessions.get(key)
            restored = session is None and key in self._spilled
            if restored:
                session = self._restore(key)
        if session is None:
            raise SessionNotFound("unknown or expired session")
        session.last_seen = self._clock()
        if restored:
            self.enforce(keep=key)
        return session

    def delete(self, key: Any) -> None:
        with self._lock:
            self._sessions.pop(key, None)
            if self._spilled.pop(key, None) is not None:
                self._disk.delete(key)

    def close(self) -> None:
        """Forget every session and remove the spill directory."""
        with self._lock:
            self._sessions.clear()
            self._spilled.clear()
            self._disk.close()

    def __len__(self) -> int:
        """Sessions in memory (see :attr:`spilled` for those on disk)."""
        return len(self._sessions)

    @property
    def spilled(self) -> int:
        return len(self._spilled)

    def field(self, session: Session, view: View, pipe: Pipeline) -> Field:
        """The view's decoded field (decoding it if needed, then re-checking the byte budget)."""
        fld, new = view.picture.field(pipe)
        if new:
            self.enforce(keep=session.key)
        return fld

    def enforce(self, keep: str | None = None) -> None:
        """Expire idle sessions, spill the least recently seen beyond ``max_sessions``, then drop
        fields and spill sessions beyond ``max_bytes``, then trim the disk to ``max_spilled``."""
        now = self._clock()
        with self._lock:
            for key, seen in list(self._spilled.items()):
                if now - seen > self.ttl:
                    del self._spilled[key]
                    self._disk.delete(key)
            by_age = sorted(self._sessions.values(), key=lambda s: s.last_seen)
            evictable = [s for s in by_age if s.key != keep and not s.runner.running]
            for s in evictable:
                if now - s.last_seen > self.ttl:
                    del self._sessions[s.key]
            evictable = [s for s in evictable if s.key in self._sessions]
            excess = len(self._sessions) - self.max_sessions
        spilled = {s.key for s in evictable[:max(0, excess)] if self._spill(s)}
        evictable = [s for s in evictable if s.key not in spilled]
        self._enforce_bytes(evictable)
        self._trim_disk()

    def _enforce_bytes(self, evictable: list[Session]) -> None:
        with self._lock:
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
        for s in evictable:
            if total <= self.max_bytes:
                break
            if self._spill(s):
                total -= sizes.get(s.key, 0)

    def _spill(self, session: Session) -> bool:
        """Move ``session`` to disk unless it is running or gone; False if it stays in memory."""
        with session.lock:
            if session.runner.running:
                return False
            try:
                data = spill.encode(session)
            except Exception:  # never expected; keeping the session in memory is the safe side
                log.exception("could not spill session %s…", session.key[:6])
                return False
            with self._lock:
                if self._sessions.get(session.key) is not session:
                    return False
                try:
                    self._disk.write(session.key, data)
                except OSError as e:
                    log.warning("could not spill a session to disk (%s); it stays in memory", e)
                    return False
                del self._sessions[session.key]
                self._spilled[session.key] = session.last_seen
        return True

    def _restore(self, key: str) -> Session | None:
        """The spilled session ``key`` back in memory (call with ``_lock`` held)."""
        del self._spilled[key]
        data = self._disk.read(key)
        self._disk.delete(key)
        if data is None:
            return None
        try:
            session = spill.decode(key, data, self._clock())
        except Exception:  # never expected (the file is ours, mode 0600)
            log.exception("could not restore spilled session %s…", key[:6])
            return None
        self._sessions[key] = session
        return session

    def _trim_disk(self) -> None:
        with self._lock:
            excess = len(self._spilled) - self.max_spilled
            if excess <= 0:
                return
            for key in sorted(self._spilled, key=self._spilled.__getitem__)[:excess]:
                del self._spilled[key]
                self._disk.delete(key)
        log.warning("session store full: deleted the %d least recently seen sessions on disk", excess)
