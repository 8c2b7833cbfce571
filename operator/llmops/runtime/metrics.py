"""The operator's own Prometheus metrics (served on /metrics)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("llmops_reconcile_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "llmops_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("llmops_reconcile_errors_total", "Reconcile errors by kind and exception type.", ["kind", "error"])
OBJECTS = Gauge("llmops_objects", "Objects by kind and phase, as last reconciled.", ["kind", "phase"])
GPUS_REQUESTED = Gauge("llmops_gpus_requested", "GPUs requested by objects not yet finished.", ["kind"])
CHILDREN_CREATED = Counter("llmops_children_created_total", "Child resources created.", ["kind", "child"])
API_WRITES = Counter("llmops_api_writes_total", "Writes to the API server by HTTP method and resource.", ["method", "resource"])

# name → (phase, gpus) of each object, to keep the gauges exact across updates and deletions.
_seen: dict[tuple[str, str, str], tuple[str, int]] = {}
_seen_lock = threading.Lock()  # reconcile workers update these concurrently


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


def observe_object(kind: str, namespace: str, name: str, phase: str | None, gpus: int) -> None:
    phase = phase or "Unknown"
    active_gpus = gpus if phase not in ("Succeeded", "Failed") else 0
    with _seen_lock:
        old = _seen.get((kind, namespace, name))
        if old == (phase, active_gpus):
            return
        if old:
            OBJECTS.labels(kind, old[0]).dec()
            GPUS_REQUESTED.labels(kind).dec(old[1])
        _seen[(kind, namespace, name)] = (phase, active_gpus)
        OBJECTS.labels(kind, phase).inc()
        GPUS_REQUESTED.labels(kind).inc(active_gpus)


def forget_object(kind: str, namespace: str, name: str) -> None:
    with _seen_lock:
        old = _seen.pop((kind, namespace, name), None)
    if old:
        OBJECTS.labels(kind, old[0]).dec()
        GPUS_REQUESTED.labels(kind).dec(old[1])


def serve(port: int) -> None:
    start_http_server(port)
