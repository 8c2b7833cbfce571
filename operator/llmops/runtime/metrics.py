"""The operator's own Prometheus metrics (served on /metrics)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from . import conditions as cond

RECONCILES = Counter("llmops_reconcile_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "llmops_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("llmops_reconcile_errors_total", "Reconcile errors by kind and exception type.", ["kind", "error"])
# One series per object (as kube-state-metrics does): bounded by the objects that exist, removed
# with them. Dashboards count them by kind and phase; alerts name the object.
OBJECT_PHASE = Gauge("llmops_object_phase", "1 for each object, labelled with its current phase.", ["namespace", "kind", "name", "phase"])
OBJECT_FAILED = Gauge("llmops_object_failed", "1 while an object is Failed, labelled with the reason its condition gives.",
                      ["namespace", "kind", "name", "reason"])
STATUS_FIGURE = Gauge("llmops_status_figure", "A number an object's status reports: final losses, sizes and qualities "
                      "before/after each compression stage, the quality gate's verdict (1 passed, 0 failed).",
                      ["namespace", "kind", "name", "stage", "figure"])
GPUS_REQUESTED = Gauge("llmops_gpus_requested", "GPUs requested by objects not yet finished.", ["kind"])
QUEUE_DEPTH = Gauge("llmops_workqueue_depth", "Object keys waiting for a reconcile worker.")
CHILDREN_CREATED = Counter("llmops_children_created_total", "Child resources created.", ["kind", "child"])
API_WRITES = Counter("llmops_api_writes_total", "Writes to the API server by HTTP method and resource.", ["method", "resource"])

# What each object last showed, to keep the per-object series exact across updates and deletions.
_seen: dict[tuple[str, str, str], "_Shown"] = {}
_seen_lock = threading.Lock()  # reconcile workers update these concurrently

Figure = tuple[str, str, float]  # (stage or "", figure name, value)


@dataclass(frozen=True)
class _Shown:
    phase: str
    gpus: int
    failure: str | None
    figures: tuple[Figure, ...]


def count_kind(kind: str) -> None:
    """Start a kind's counters at zero, so rates and error ratios read 0 rather than no data."""
    for result in ("success", "error"):
        RECONCILES.labels(kind, result)


@contextmanager
def reconcile_timer(kind: str):
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        RECONCILES.labels(kind, "error").inc()
        ERRORS.labels(kind, type(exc).__name__).inc()
        raise
    else:
        RECONCILES.labels(kind, "success").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def observe_object(kind: str, namespace: str, name: str, status: dict[str, Any], figures: list[Figure] = ()) -> None:
    phase = status.get("phase") or "Unknown"
    finished = phase in ("Succeeded", "Failed")
    shown = _Shown(phase, 0 if finished else status.get("gpus") or 0,
                   failure_reason(status) if phase == "Failed" else None,
                   tuple(f for f in figures if isinstance(f[2], (int, float))))  # a status is user-visible data: skip what is not a number
    key = (kind, namespace, name)
    with _seen_lock:
        old = _seen.get(key)
        if old == shown:
            return
        if old:
            _unshow(key, old)
        _seen[key] = shown
        OBJECT_PHASE.labels(namespace, kind, name, shown.phase).set(1)
        GPUS_REQUESTED.labels(kind).inc(shown.gpus)
        if shown.failure:
            OBJECT_FAILED.labels(namespace, kind, name, shown.failure).set(1)
        for stage, figure, value in shown.figures:
            STATUS_FIGURE.labels(namespace, kind, name, stage, figure).set(value)


def forget_object(kind: str, namespace: str, name: str) -> None:
    with _seen_lock:
        old = _seen.pop((kind, namespace, name), None)
        if old:
            _unshow((kind, namespace, name), old)


def _unshow(key: tuple[str, str, str], shown: _Shown) -> None:
    kind, namespace, name = key
    OBJECT_PHASE.remove(namespace, kind, name, shown.phase)
    GPUS_REQUESTED.labels(kind).dec(shown.gpus)
    if shown.failure:
        OBJECT_FAILED.remove(namespace, kind, name, shown.failure)
    for stage, figure, _ in shown.figures:
        STATUS_FIGURE.remove(namespace, kind, name, stage, figure)


def failure_reason(status: dict[str, Any]) -> str:
    """The reason of the condition that says why: a job's Failed, a service's Ready."""
    conditions = status.get("conditions")
    failed, ready = cond.find(conditions, cond.FAILED) or {}, cond.find(conditions, "Ready") or {}
    if failed.get("status") == "True" and failed.get("reason"):
        return failed["reason"]
    if ready.get("status") != "True" and ready.get("reason"):
        return ready["reason"]
    return "Unknown"


def watch_queue(depth: Callable[[], int]) -> None:
    QUEUE_DEPTH.set_function(depth)


def serve(port: int) -> None:
    start_http_server(port)
