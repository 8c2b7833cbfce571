"""Polling with a deadline: the tests' one way to wait for the cluster."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30, interval: float = 0.25, what: str = "condition", on_timeout=None):
    """Poll until predicate() returns something truthy; return it. `on_timeout()` adds what a
    person needs to see when it never comes (pods, events)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = f"\n{on_timeout()}" if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r}){detail}")
