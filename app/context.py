"""What the routes and the UI share: the pipeline, the sessions, the tile cache and pool, the limits."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from infd_core.pipeline import Pipeline

from .deepzoom import render_tile
from .sessions import Session, SessionStore, View
from .tiles import ByteLRU, TileWorkers


@dataclass(frozen=True)
class Limits:
    """Server limits (``app.py`` flags set the first two)."""

    max_export_pixels: int = 8192 * 8192
    max_canvas_side: int = 65536
    tile_cache_bytes: int = 256 << 20
    tile_threads: int = 2
    max_sessions: int = 64
    session_ttl: float = 2 * 3600
    session_bytes: int = 1 << 30
    concurrent_exports: int = 2


@dataclass
class AppContext:
    """The app's shared services; one per server."""

    pipe: Pipeline
    limits: Limits = field(default_factory=Limits)
    scorer_spec: str | None = None
    model_note: str = ""  # shown in the UI header, e.g. "random weights"

    def __post_init__(self) -> None:
        lim = self.limits
        self.store = SessionStore(lim.max_sessions, lim.session_ttl, lim.session_bytes)
        self.cache = ByteLRU(lim.tile_cache_bytes)
        self.workers = TileWorkers(lim.tile_threads)
        self.exports = threading.BoundedSemaphore(lim.concurrent_exports)
        self._scorer: Any = None
        self._scorer_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.pipe.cfg.name

    def tile_png(self, session: Session, view: View, level: int, x: int, y: int) -> bytes:
        """Render one tile as PNG (runs on a tile worker thread)."""
        field_ = self.store.field(session, view, self.pipe)
        return render_tile(self.pipe, field_, view.pyramid, level, x, y)

    def check_export(self, width: int, height: int) -> None:
        """ValueError unless ``width x height`` is a valid size within the export limit."""
        if width <= 0 or height <= 0:
            raise ValueError("export size must be positive")
        if width * height > self.limits.max_export_pixels:
            raise ValueError(f"{width}x{height} is over the export limit of {self.limits.max_export_pixels:,} pixels "
                             f"(about {int(self.limits.max_export_pixels ** 0.5)}² ; see app.py --max-export)")
        if max(width, height) > self.limits.max_canvas_side:
            raise ValueError(f"export sides are limited to {self.limits.max_canvas_side} px")

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
