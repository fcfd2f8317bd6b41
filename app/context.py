"""What the routes and the UI share: the pipeline, the sessions, the tile cache and pool, the limits."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from infd_core.geometry import Size
from infd_core.pipeline import Pipeline

from .deepzoom import render_tile
from .exports import ExportSlots
from .sessionfile import Loaded
from .sessionfile import load as load_session
from .sessions import Session, View
from .store import SessionStore
from .tiles import ByteLRU, Overloaded, TileWorkers

LOAD_WAIT = 10.0  # seconds a session file waits for a free loading slot


@dataclass(frozen=True)
class Limits:
    """Server limits (``app.py`` flags set the first two: --max-export, --max-canvas-side)."""

    max_export_pixels: int = 8192 * 8192
    max_canvas_side: int = 65536
    tile_cache_bytes: int = 256 << 20
    tile_threads: int = 2
    tile_queue: int = 64  # tile renders waiting; beyond this a request gets 503 at once
    tile_wait: float = 4.0  # seconds a tile request waits for its render before 503
    tile_retry_after: int = 1  # seconds, the Retry-After of a 503 (the viewer retries then)
    preview_every: float = 0.7  # seconds between the previews of a run (generate.PreviewPacer)
    max_sessions: int = 64  # in memory; beyond this the least recently seen are spilled to disk
    max_spilled: int = 4096  # on disk; beyond this the least recently seen are deleted (logged)
    session_ttl: float = 2 * 3600
    session_bytes: int = 1 << 30
    sessions_per_minute: int = 30  # new sessions per client address
    concurrent_exports: int = 2
    exports_per_client: int = 1  # of those, for one client address
    export_seconds: float = 1800  # an export still streaming after this is cut off and frees its slot
    export_stall: float = 15.0  # seconds a client may take no data (stop reading) before its export is cut off
    concurrent_loads: int = 2  # session files being parsed at once


def client_of(request: Any) -> str | None:
    """The client address of a request (a Starlette or Gradio one), what per-client limits count
    by; None if unknown."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None)


class RunClock:
    """Seconds per step of the runs this server has finished, by kind ("unguided", "guided",
    "guided, fresh"): what the UI quotes before a run starts. The newest run counts most (an
    average that halves the weight of the older ones at each run)."""

    def __init__(self) -> None:
        self._per_step: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, steps: int, seconds: float) -> None:
        with self._lock:
            per = seconds / max(steps, 1)
            old = self._per_step.get(kind)
            self._per_step[kind] = per if old is None else (old + per) / 2

    def expect(self, kind: str, steps: int) -> float | None:
        """Seconds a run of ``steps`` is expected to take, None before one of its kind has run."""
        with self._lock:
            per = self._per_step.get(kind)
        return None if per is None else per * steps


@dataclass
class AppContext:
    """The app's shared services; one per server."""

    pipe: Pipeline
    limits: Limits = field(default_factory=Limits)
    scorer_spec: str | None = None
    model_note: str = ""  # shown in the UI header, e.g. "random weights"

    def __post_init__(self) -> None:
        lim = self.limits
        self.store = SessionStore(lim.max_sessions, lim.session_ttl, lim.session_bytes,
                                  max_spilled=lim.max_spilled, per_minute=lim.sessions_per_minute,
                                  max_canvas_side=lim.max_canvas_side)
        self.cache = ByteLRU(lim.tile_cache_bytes)
        self.workers = TileWorkers(lim.tile_threads, max_queue=lim.tile_queue)
        self.exports = ExportSlots(lim.concurrent_exports, lim.exports_per_client)
        self._loads = threading.BoundedSemaphore(lim.concurrent_loads)
        self.run_clock = RunClock()
        self._scorer: Any = None
        self._scorer_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.pipe.cfg.name

    def tile_png(self, session: Session, view: View, level: int, x: int, y: int) -> bytes:
        """Render one tile as PNG (runs on a tile worker thread)."""
        field_ = self.store.field(session, view, self.pipe)
        return render_tile(self.pipe, field_, view.pyramid, level, x, y)

    @staticmethod
    def tile_key(view: View, level: int, x: int, y: int) -> tuple:
        """The key of a tile in the cache and in the tile pool: what its pixels are, i.e. the picture,
        the size of the whole render (the level's) and the tile's pixels in it. Views of one picture
        share every level of the same size: a canvas switch (level 11 of a 4096² canvas is the
        whole 2048² canvas) or an undo shows tiles already rendered."""
        return (view.picture.uid, view.pyramid.level_size(level), view.pyramid.tile_range(level, x, y))

    def prerender(self, session: Session, view: View) -> int:
        """Decode ``view``'s field now and queue renders of the tiles the viewer's view needs
        (:attr:`Session.showing`, which the viewer reports), so that a new picture's view is ready
        when the viewer asks for it; returns how many tiles were queued.

        The renders go through the tile pool like the viewer's own requests (which then join
        them), into the cache; they take at most half of the pool's queue, so one session's new
        picture never crowds out other users' tiles.
        """
        self.store.field(session, view, self.pipe)
        queued = 0
        for level, x, y in session.showing:
            try:
                key = self.tile_key(view, level, x, y)
            except ValueError:  # the canvas changed since
                continue
            if self.cache.get(key) is not None:
                continue
            if self.workers.pending >= self.limits.tile_queue // 2:
                break
            try:
                job = self.workers.submit(key, lambda lv=level, tx=x, ty=y: self.tile_png(session, view, lv, tx, ty))
            except Overloaded:
                break
            job.add_done_callback(lambda f, k=key: None if f.cancelled() or f.exception() else self.cache.put(k, f.result()))
            queued += 1
        return queued

    def check_export(self, size: Size) -> None:
        """ValueError unless ``size`` is a valid size within the export limit."""
        height, width = size
        if width <= 0 or height <= 0:
            raise ValueError("export size must be positive")
        if width * height > self.limits.max_export_pixels:
            raise ValueError(f"{size} is over the export limit of {self.limits.max_export_pixels:,} pixels "
                             f"(about {int(self.limits.max_export_pixels ** 0.5)}² ; see app.py --max-export)")
        if max(width, height) > self.limits.max_canvas_side:
            raise ValueError(f"export sides are limited to {self.limits.max_canvas_side} px")

    def load_session_file(self, data: bytes) -> Loaded:
        """Parse a session file (:func:`app.sessionfile.load`), at most ``concurrent_loads`` at once;
        ValueError (a message for the user) if it is malformed or the server is busy loading others."""
        if not self._loads.acquire(timeout=LOAD_WAIT):
            raise ValueError("the server is busy loading other session files; try again in a moment")
        try:
            return load_session(data, self.pipe, self.limits.max_canvas_side)
        finally:
            self._loads.release()

    @property
    def scorer_loaded(self) -> bool:
        return self._scorer is not None

    def scorer(self) -> Any:
        """The guidance scorer, loaded on first use (``infd_core.scorers.load_scorer``)."""
        with self._scorer_lock:
            if self._scorer is None:
                from infd_core.scorers import load_scorer

                self._scorer = load_scorer(self.scorer_spec, device=str(self.pipe.device))
            return self._scorer
