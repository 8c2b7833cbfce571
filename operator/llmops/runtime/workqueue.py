"""A deduplicating work queue of object keys, drained by a fixed set of worker threads.

Watch events only put a key here and return, so a burst of pod updates (created,
scheduled, started, ready) becomes one reconcile, and the watch streams never wait
behind slow API calls. A key is reconciled by one worker at a time; a key that
changes while being reconciled is queued once more.

Three lanes, served in order: objects never reconciled yet (their first pass
creates their workload), then keys from watch events, then periodic resyncs
(progress scrapes). A thousand running jobs cannot delay the first reconcile of
a new one. Failures come back after a growing delay, held by one
timer thread for the whole queue (not a thread per retry).

Nothing is handed to a worker before `open()`: the controller opens the queue
once its cache holds a complete listing of every watched kind, so no reconcile
acts on a half-filled cache.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable, Hashable

log = logging.getLogger("llmops.workqueue")

FIRST, URGENT, RESYNC = 0, 1, 2


class RetryLater(Exception):
    """A pass that did what it could and must run again after a backoff (a quota, an old child going)."""


class WorkQueue:
    def __init__(self, handle: Callable[[Hashable], None], workers: int = 8, name: str = "llmops-worker",
                 retry_delays: tuple[float, ...] = (1, 2, 5, 10, 30, 60), first_only: int = 0):
        self._handle = handle
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # workers wait here for keys
        # The delay thread waits on its own condition: a notify() meant for a worker
        # must never wake it instead (it would swallow the wake-up and a key would sit idle).
        self._delays_changed = threading.Condition(lock)
        self._first_arrived = threading.Condition(lock)  # the same, for workers reserved to first passes
        self._lanes: tuple[deque[Hashable], ...] = (deque(), deque(), deque())
        self._queued: dict[Hashable, int] = {}  # key → lane it waits in
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._retry_delays = retry_delays
        self._open = False
        self._stopped = False
        # The first `first_only` workers take only never-reconciled objects: however busy the
        # others are with events of running ones, a new object's first pass starts at once.
        for i in range(workers):
            threading.Thread(target=self._work, args=(i < first_only,), name=f"{name}-{i}", daemon=True).start()
        threading.Thread(target=self._release_delayed, name=f"{name}-delays", daemon=True).start()

    def add(self, key: Hashable, lane: int = URGENT) -> None:
        with self._cond:
            if self._stopped:
                return
            if key in self._processing:
                self._dirty.add(key)  # run again once the current pass ends
                return
            waiting = self._queued.get(key)
            if waiting is not None:
                if waiting > lane:  # e.g. a resync waiting behind others became urgent
                    self._lanes[waiting].remove(key)
                    self._enqueue(key, lane)
                return
            self._enqueue(key, lane)

    def add_after(self, key: Hashable, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key))
            self._delays_changed.notify()

    def depth(self) -> int:
        """Keys waiting for a worker (not those being reconciled or waiting out a retry delay)."""
        with self._cond:
            return len(self._queued)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()
            self._first_arrived.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            self._first_arrived.notify_all()
            self._delays_changed.notify()

    def _enqueue(self, key: Hashable, lane: int) -> None:
        self._queued[key] = lane
        self._lanes[lane].append(key)
        self._cond.notify()
        if lane == FIRST:
            self._first_arrived.notify()

    def _next(self, first_only: bool) -> Hashable | None:
        lanes = self._lanes[:1] if first_only else self._lanes
        wake = self._first_arrived if first_only else self._cond
        with self._cond:
            while not self._stopped and not (self._open and any(lanes)):
                wake.wait()
            if self._stopped:
                return None
            key = next(lane for lane in lanes if lane).popleft()
            del self._queued[key]
            self._processing.add(key)
            return key

    def _work(self, first_only: bool = False) -> None:
        while (key := self._next(first_only)) is not None:
            try:
                self._handle(key)
            except Exception as exc:  # noqa: BLE001 - logged, retried with backoff
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                if isinstance(exc, RetryLater):
                    log.info("%s: %s; again in %ss", key, exc, delay)
                else:
                    log.exception("reconcile of %s failed; retrying in %ss", key, delay)
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                with self._cond:
                    self._processing.discard(key)
                    if key in self._dirty:
                        self._dirty.discard(key)
                        if key not in self._queued:
                            self._enqueue(key, URGENT)

    def _release_delayed(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._delayed or self._delayed[0][0] > time.monotonic()):
                    self._delays_changed.wait(timeout=self._delayed[0][0] - time.monotonic() if self._delayed else None)
                if self._stopped:
                    return
                _, _, key = heapq.heappop(self._delayed)
            self.add(key)
