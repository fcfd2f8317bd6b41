"""Export slots: a few streamed exports at a time, each slot freed when its stream ends for any reason.

An export holds a slot from the moment the route accepts it until its response is over: sent
completely, failed, abandoned by the client (a closed tab or a cancelled download), or past its
deadline (a client that stops reading). :class:`ExportResponse` frees the slot in a ``finally``
around the whole response, so an abort never leaks one, and the renderer learns about it through
:meth:`ExportJob.check`, which it calls between strips, so no rendering goes on for nobody.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)


class ExportStopped(Exception):
    """The export's client went away or its deadline passed; the stream ends here."""


class ExportSlots:
    """At most ``count`` exports at once (a counting semaphore that can also say how many are free)."""

    def __init__(self, count: int):
        self.count = count
        self._used = 0
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        with self._lock:
            return self.count - self._used

    def acquire(self) -> bool:
        """Take a slot if one is free (never blocks)."""
        with self._lock:
            if self._used >= self.count:
                return False
            self._used += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._used <= 0:
                raise ValueError("export slot released more often than acquired")
            self._used -= 1

    def start(self, deadline_s: float, clock: Callable[[], float] = time.monotonic) -> ExportJob | None:
        """An :class:`ExportJob` holding a slot, or None when all slots are taken."""
        return ExportJob(self, deadline_s, clock) if self.acquire() else None


class ExportJob:
    """One running export: owns a slot until :meth:`finish`; ``check()`` stops the renderer once it is over."""

    def __init__(self, slots: ExportSlots, deadline_s: float, clock: Callable[[], float] = time.monotonic):
        self._slots = slots
        self._clock = clock
        self.deadline_s = deadline_s
        self._deadline = clock() + deadline_s
        self._finished = threading.Event()
        self._once = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def finish(self) -> None:
        """Free the slot (only the first call does anything) and make :meth:`check` stop the renderer."""
        with self._once:
            if self._finished.is_set():
                return
            self._finished.set()
        self._slots.release()

    def check(self) -> None:
        """Raise :class:`ExportStopped` once the export is over or past its deadline (called between strips)."""
        if self._clock() > self._deadline:
            self.finish()
        if self.finished:
            raise ExportStopped()


class ExportResponse(StreamingResponse):
    """A streamed export that frees its :class:`ExportJob` when the response ends, however it ends.

    Starlette cancels the response when the client disconnects; the ``finally`` below runs then
    (within one strip's render time, which ends the thread the body is waiting on). A client that
    stays connected but stops reading is cut off at the job's deadline.
    """

    def __init__(self, chunks, job: ExportJob, **kwargs):
        super().__init__(chunks, **kwargs)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self.job.deadline_s):
                await super().__call__(scope, receive, send)
        except ExportStopped:  # past the deadline while rendering: the download is left incomplete
            log.info("export stopped after %.0f s (the limit); its slot is free", self.job.deadline_s)
        finally:
            self.job.finish()
