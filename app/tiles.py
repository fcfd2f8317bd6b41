"""Serving tiles fast next to long model work: a byte-bounded cache and a newest-first render pool.

The policy that keeps the canvas responsive on a small CPU:

* Tile renders are short (tens of ms) and run on a small pool of their own threads, newest
  request first: after a pan or zoom the tiles of the new view jump the queue, and identical
  requests in flight are rendered once.
* Long work (sampling, exports) calls :meth:`TileWorkers.yield_to_tiles` between steps and
  pauses there while tiles are waiting or rendering, so a generation or a big export of one
  user never stalls another user's view for more than one step.
"""
from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future


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


class TileWorkers:
    """A pool of threads running tile renders newest-first, with de-duplication of equal keys."""

    def __init__(self, threads: int = 2):
        self._heap: list[tuple[int, Hashable, Callable[[], bytes]]] = []
        self._futures: dict[Hashable, Future] = {}
        self._seq = itertools.count()
        self._active = 0
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"tile-{i}", daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, fn: Callable[[], bytes]) -> Future:
        """Queue ``fn`` (or join the identical request already queued); the newest runs first."""
        with self._cond:
            fut = self._futures.get(key)
            if fut is None:
                fut = self._futures[key] = Future()
                heapq.heappush(self._heap, (-next(self._seq), key, fn))
                self._cond.notify_all()
            return fut

    @property
    def busy(self) -> bool:
        return bool(self._heap) or self._active > 0

    def yield_to_tiles(self, max_wait: float = 2.0) -> None:
        """Block while tiles are queued or rendering (at most ``max_wait`` s, so long work still progresses)."""
        with self._cond:
            self._cond.wait_for(lambda: not self.busy, timeout=max_wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._heap))
                _, key, fn = heapq.heappop(self._heap)
                self._active += 1
            fut = self._futures[key]
            try:
                fut.set_result(fn())
            except Exception as e:  # delivered to the awaiting request
                fut.set_exception(e)
            finally:
                with self._cond:
                    del self._futures[key]
                    self._active -= 1
                    self._cond.notify_all()
