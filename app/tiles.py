"""Serving tiles fast next to long model work: a byte-bounded cache and a newest-first render pool.

The policy that keeps the canvas responsive on a small CPU:

* Tile renders are short (tens of ms) and run on a small pool of their own threads, newest
  request first: after a pan or zoom the tiles of the new view jump the queue, and identical
  requests in flight are rendered once. A request that has waited over a second goes next
  anyway, the queue is bounded (the server answers 503 + Retry-After beyond it), and renders
  whose clients went away are dropped before they start.
* Long work (sampling, exports) calls :meth:`TileWorkers.yield_to_tiles` between steps and
  pauses there while tiles are waiting or rendering, so a generation or a big export of one
  user never stalls another user's view for more than one step.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field


class ByteLRU:
    """A thread-safe LRU mapping of keys to ``bytes``, bounded by the total size of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.nbytes += len(data) - (len(old) if old is not None else 0)
            self._items[key] = data
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


class Overloaded(RuntimeError):
    """Too many tile renders are already waiting: the client should retry a little later."""


@dataclass(eq=False)
class _Job:
    key: Hashable
    fn: Callable[[], bytes]
    queued_at: float
    future: Future = field(default_factory=Future)
    waiters: int = 1  # requests waiting for this render (identical requests share it)
    state: str = "queued"  # then "running", or "dropped" when every waiter withdrew first


class TileWorkers:
    """A pool of threads running tile renders, with de-duplication of equal keys.

    Order: newest first (the view on screen now fills first), except that a request queued for
    longer than ``starve_after`` seconds goes next (the oldest such first), so no request waits
    behind an endless stream of newer ones. At most ``max_queue`` renders wait (:meth:`submit`
    raises :class:`Overloaded` beyond), and a queued render nobody waits for any more (every
    requester called :meth:`withdraw`: the client went away) is dropped unrendered.
    """

    def __init__(self, threads: int = 2, max_queue: int = 64, starve_after: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_queue, self.starve_after = max_queue, starve_after
        self._clock = clock
        self._queue: deque[_Job] = deque()  # arrival order; dropped jobs are skipped when reached
        self._jobs: dict[Hashable, _Job] = {}  # queued or running, by key
        self._pending = 0  # queued jobs, dropped ones not counted
        self._active = 0
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"tile-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, fn: Callable[[], bytes]) -> Future:
        """Queue ``fn`` (or join the identical request already queued or running); Overloaded if
        ``max_queue`` renders are already waiting."""
        with self._cond:
            job = self._jobs.get(key)
            if job is not None:
                job.waiters += 1
                return job.future
            if self._pending >= self.max_queue:
                raise Overloaded(f"{self._pending} tiles are waiting")
            job = self._jobs[key] = _Job(key, fn, self._clock())
            self._queue.append(job)
            self._pending += 1
            self._cond.notify_all()
            return job.future

    def withdraw(self, key: Hashable, future: Future) -> None:
        """One requester of ``key`` no longer waits for ``future``; the render is dropped if it
        has not started and nobody else waits for it."""
        with self._cond:
            job = self._jobs.get(key)
            if job is None or job.future is not future:
                return
            job.waiters -= 1
            if job.waiters <= 0 and job.state == "queued":
                job.state = "dropped"
                del self._jobs[key]
                self._pending -= 1
                job.future.cancel()
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Renders queued and not started."""
        return self._pending

    @property
    def busy(self) -> bool:
        return self._pending > 0 or self._active > 0

    def yield_to_tiles(self, max_wait: float = 2.0) -> None:
        """Block while tiles are queued or rendering (at most ``max_wait`` s, so long work still progresses)."""
        with self._cond:
            self._cond.wait_for(lambda: not self.busy, timeout=max_wait)

    def _take(self) -> _Job:
        """The next job to run (call with ``_cond`` held and ``_pending > 0``)."""
        q = self._queue
        while q[0].state == "dropped":
            q.popleft()
        while q[-1].state == "dropped":
            q.pop()
        job = q.popleft() if self._clock() - q[0].queued_at > self.starve_after else q.pop()
        job.state = "running"
        self._pending -= 1
        return job

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending > 0)
                job = self._take()
                self._active += 1
            try:
                job.future.set_result(job.fn())
            except Exception as e:  # delivered to the awaiting request
                job.future.set_exception(e)
            finally:
                with self._cond:
                    del self._jobs[job.key]
                    self._active -= 1
                    self._cond.notify_all()
