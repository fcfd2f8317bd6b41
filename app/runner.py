"""One model run at a time per session: start it, follow it, cancel it.

A :class:`Runner` belongs to a session. :meth:`Runner.run` starts ``job(report, should_stop)``
on a thread of its own and returns an iterator over what the job reports, ending with the job's
result; an exception in the job is raised to the consumer. If the consumer stops early (a
closed page), the run is cancelled at its next step. Only one run is active at a time;
:meth:`Runner.cancel` stops it and waits until it has ended.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Busy(RuntimeError):
    """The session is already running the model."""


_DONE = object()  # marks the job's result in the event queue


class Runner:
    """A session's model runs (see the module docstring)."""

    def __init__(self) -> None:
        self._active = threading.Lock()
        self._cancel = threading.Event()
        self._ended = threading.Event()  # the active run's end (set once its lock is released)
        self._ended.set()

    @property
    def running(self) -> bool:
        return self._active.locked()

    def run(self, job: Callable[[Callable[[Any], None], Callable[[], bool]], Any], *,
            on_error: Callable[[], None] | None = None) -> Iterator[Any]:
        """Start ``job(report, should_stop)``; yields each ``report(event)`` and finally the job's
        return value. ``on_error()`` runs on the job's thread if it raises (cancellation included).
        Raises :class:`Busy` at once if a run is active."""
        if not self._active.acquire(blocking=False):
            raise Busy("this session is already generating")
        cancel = self._cancel = threading.Event()  # this run's flag: a stale consumer can stop only its own run
        ended = self._ended = threading.Event()
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                events.put((_DONE, job(events.put, cancel.is_set)))
            except BaseException as e:  # handed to the consumer, which re-raises it
                if on_error is not None:
                    on_error()
                events.put(e)
            finally:
                self._active.release()
                ended.set()

        threading.Thread(target=work, name="model-run", daemon=True).start()
        return self._follow(events, cancel)

    def _follow(self, events: queue.Queue, cancel: threading.Event) -> Iterator[Any]:
        finished = False
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                if isinstance(event, tuple) and len(event) == 2 and event[0] is _DONE:
                    finished = True
                    yield event[1]
                    return
                yield event
        finally:
            if not finished:  # consumer gone early: stop at the next step
                cancel.set()

    def cancel(self, timeout: float = 120) -> bool:
        """Ask the active run to stop and wait (at most ``timeout`` s) until it has; False if
        nothing was running."""
        if not self.running:
            return False
        ended = self._ended
        self._cancel.set()
        ended.wait(timeout)  # not by taking the lock: a new run must find it free the moment this one ends
        return True


__all__ = ["Busy", "Runner"]
