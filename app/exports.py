"""Export slots: a few streamed exports at a time, each slot freed when its stream ends for any reason.

An export holds a slot from the moment the route accepts it until its response is over: sent
completely, failed, abandoned by the client (a closed tab or a cancelled download), stalled (a
client that stops reading: no chunk accepted for ``stall_s``), or past its deadline. One client
address holds at most ``per_client`` slots, so one user cannot take them all. :class:`ExportResponse` frees the slot in a ``finally``
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
    """At most ``count`` exports at once, at most ``per_client`` of them for one client address (a
    counting semaphore that can also say how many are free, and why none is)."""

    def __init__(self, count: int, per_client: int | None = None):
        self.count = count
        self.per_client = per_client or count
        self._used = 0
        self._clients: dict[str | None, int] = {}
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        with self._lock:
            return self.count - self._used

    def refusal(self, client: str | None = None) -> str | None:
        """Why an export of ``client`` would be refused now (None: it would get a slot)."""
        with self._lock:
            return self._refusal(client)

    def _refusal(self, client: str | None) -> str | None:
        if self._used >= self.count:
            return "too many exports are running; try again in a moment"
        if client is not None and self._clients.get(client, 0) >= self.per_client:
            return (f"you have {self.per_client} export{'s' * (self.per_client > 1)} running already; "
                    "wait for it to finish (or cancel its download)")
        return None

    def acquire(self, client: str | None = None) -> bool:
        """Take a slot if one is free for ``client`` (never blocks)."""
        with self._lock:
            if self._refusal(client) is not None:
                return False
            self._used += 1
            self._clients[client] = self._clients.get(client, 0) + 1
            return True

    def release(self, client: str | None = None) -> None:
        with self._lock:
            if self._used <= 0 or self._clients.get(client, 0) <= 0:
                raise ValueError("export slot released more often than acquired")
            self._used -= 1
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]

    def start(self, deadline_s: float, clock: Callable[[], float] = time.monotonic, *, client: str | None = None,
              stall_s: float | None = None) -> ExportJob | None:
        """An :class:`ExportJob` holding a slot of ``client``'s, or None when none is free for it."""
        return ExportJob(self, deadline_s, clock, client=client, stall_s=stall_s) if self.acquire(client) else None


class ExportJob:
    """One running export: owns a slot until :meth:`finish`; ``check()`` stops the renderer once it is over."""

    def __init__(self, slots: ExportSlots, deadline_s: float, clock: Callable[[], float] = time.monotonic, *,
                 client: str | None = None, stall_s: float | None = None):
        self._slots = slots
        self._clock = clock
        self.client = client
        self.deadline_s = deadline_s
        self.stall_s = stall_s if stall_s is not None else deadline_s  # a chunk not accepted within this ends it
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
        self._slots.release(self.client)

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
    stays connected but stops reading is cut off once a chunk waits ``job.stall_s`` to be taken
    (the server's send blocks when the client's window is full), and every export at the job's
    deadline.
    """

    def __init__(self, chunks, job: ExportJob, **kwargs):
        super().__init__(chunks, **kwargs)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stalled = False
        try:
            with anyio.move_on_after(self.job.deadline_s) as response:
                async def send_or_stall(message) -> None:
                    nonlocal stalled
                    with anyio.move_on_after(self.job.stall_s) as waiting:
                        await send(message)
                    if waiting.cancelled_caught:  # the client stopped reading: end the whole response
                        stalled = True
                        response.cancel()
                        await anyio.lowlevel.checkpoint()

                await super().__call__(scope, receive, send_or_stall)
        except ExportStopped:  # past the deadline while rendering: the download is left incomplete
            log.info("export stopped after %.0f s (the limit); its slot is free", self.job.deadline_s)
        finally:
            if stalled:
                log.info("export stopped: its client took no data for %.0f s; its slot is free", self.job.stall_s)
            self.job.finish()
