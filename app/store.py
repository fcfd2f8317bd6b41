"""All sessions of a server, by key: thread-safe, bounded, and nothing lost silently.

Memory: a session's latents are small (48 KB each); its decoded fields are not (8-32 MB), so the
:class:`SessionStore` first drops fields of the least recently used pictures (they are decoded
again on demand), then spills the least recently seen sessions to disk (:mod:`app.spill`) and
restores them on their next request. New sessions are limited per client address.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from infd_core.geometry import Size
from infd_core.pipeline import Field, Pipeline

from . import spill
from .sessions import KEY, Session, SessionNotFound, View
from .spill import SpillDir

log = logging.getLogger(__name__)

RATE_WINDOW = 60.0  # seconds over which new sessions per client address are counted
RATE_TABLE = 4096  # client addresses remembered before the quiet ones are forgotten


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
                 clock: Callable[[], float] = time.monotonic, *, max_spilled: int = 4096, per_minute: int = 30,
                 max_canvas_side: int = 65536):
        self.max_sessions, self.ttl, self.max_bytes = max_sessions, ttl, max_bytes
        self.max_canvas_side = max_canvas_side  # every session's Session.max_side
        self.max_spilled, self.per_minute = max_spilled, per_minute
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._spilled: dict[str, float] = {}  # key -> last_seen of the sessions on disk
        self._disk = SpillDir()
        self._created: dict[str, deque[float]] = {}  # client address -> its creations in the last minute
        self._lock = threading.Lock()

    def create(self, canvas: Size = Size(2048, 2048), client: str | None = None) -> Session:
        """A new session; TooManySessions if ``client`` (an address) has created too many this minute."""
        if client is not None:
            self._admit(client)
        session = Session(secrets.token_urlsafe(24), canvas=canvas, last_seen=self._clock(), max_side=self.max_canvas_side)
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
            session = spill.decode(key, data, self._clock(), self.max_canvas_side)
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
