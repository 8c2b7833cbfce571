"""A deduplicating work queue of object keys, drained by a fixed set of worker threads.

Watch events only put a key here and return, so a burst of pod updates (created,
scheduled, started, ready) becomes one reconcile, and the watch streams never wait
behind slow API calls. A key is reconciled by one worker at a time; a key that
changes while being reconciled is queued once more. Failures come back with a
growing delay.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Hashable

log = logging.getLogger("llmops.workqueue")


class WorkQueue:
    def __init__(self, handle: Callable[[Hashable], None], workers: int = 8, name: str = "llmops-worker",
                 retry_delays: tuple[float, ...] = (1, 2, 5, 10, 30, 60)):
        self._handle = handle
        self._cond = threading.Condition()
        self._order: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._retry_delays = retry_delays
        self._stopped = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def add(self, key: Hashable) -> None:
        with self._cond:
            if self._stopped or key in self._queued:
                return
            if key in self._processing:
                self._dirty.add(key)  # run again once the current pass ends
                return
            self._queued.add(key)
            self._order.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        timer = threading.Timer(delay, self.add, args=(key,))
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._order and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = self._order.popleft()
                self._queued.discard(key)
                self._processing.add(key)
            try:
                self._handle(key)
            except Exception:  # noqa: BLE001 - logged, retried with backoff
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
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
                            self._queued.add(key)
                            self._order.append(key)
                            self._cond.notify()
