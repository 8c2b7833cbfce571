"""Kopf handlers for FineTuneJob: thin triggers around one level-based reconcile.

Whatever wakes us (a watch event of the object, of one of its Jobs or pods, the
periodic tick, the initial listing after a restart), the same `reconcile` runs:
read the object and its children from the cache the watch events keep, `plan()`,
apply. Only watching handlers: no finalizer and no Kopf state on our objects, so
a FineTuneJob can be deleted while the operator is down (its children go with it
through owner references).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .. import metrics, modelinfo, peering
from ..api import GROUP, VERSION
from ..conditions import now, parse_time
from ..cache import Cache
from ..kube import Kube
from ..progress import progress_status, scrape
from ..reconcile.finetune import Observed, plan
from ..settings import LABEL_KIND, LABEL_MANAGED_BY, MANAGED_BY, Settings

KIND, PLURAL = "FineTuneJob", "finetunejobs"
CHILD_LABELS = {LABEL_KIND: "finetunejob", LABEL_MANAGED_BY: MANAGED_BY}

log = logging.getLogger("llmops.finetune")
SETTINGS = Settings.from_env()
FAILED_CREATE_GRACE = 5  # seconds a new Job may be without pods before we ask why
_kube: Kube | None = None
CACHE = Cache()


class Coalescer:
    """At most one reconcile per object runs; requests arriving meanwhile fold into one re-run.

    A training pod's status changes in bursts (scheduled, started, ready); each
    would otherwise queue a full reconcile behind the running one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()

    def run(self, key: tuple[str, str], work) -> None:
        with self._lock:
            if key in self._running:
                self._dirty.add(key)
                return
            self._running.add(key)
        try:
            while True:
                work()
                with self._lock:
                    if key not in self._dirty:
                        self._running.discard(key)
                        return
                    self._dirty.discard(key)
        except BaseException:
            with self._lock:
                self._running.discard(key)
                self._dirty.discard(key)
            raise


_coalescer = Coalescer()


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


def _owned_by(obj: dict[str, Any], uids: set[str]) -> bool:
    return any(ref.get("uid") in uids for ref in obj["metadata"].get("ownerReferences") or [])


def reconcile(namespace: str, name: str, scrape_progress: bool = False) -> None:
    # One reconcile per object at a time: events for its Jobs, pods and itself race otherwise.
    _coalescer.run((namespace, name), lambda: _reconcile(namespace, name, scrape_progress))


def _reconcile(namespace: str, name: str, scrape_progress: bool, _depth: int = 0) -> None:
    with metrics.reconcile_timer(KIND):
        k = kube()
        body = CACHE.parent(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            metrics.forget_object(KIND, namespace, name)
            TICKER.track(namespace, name, None)
            return
        jobs = [j for j in CACHE.children(namespace, name, "Job") if _owned_by(j, {body["metadata"]["uid"]})]
        pods = [p for p in CACHE.children(namespace, name, "Pod") if _owned_by(p, {j["metadata"]["uid"] for j in jobs})]
        old_status = body.get("status") or {}
        model_config = None
        if not old_status.get("selectedMethod"):
            base = (body.get("spec") or {}).get("baseModel") or {}
            model_config = modelinfo.fetch_config(base.get("uri", ""), base.get("revision"))
        failed_creates = _failed_creates(k, namespace, old_status, jobs, pods)
        result = plan(Observed(body, jobs, pods, now(), k.gpu_memory_mib(), model_config, failed_creates), SETTINGS)

        for child in result.create:
            created = k.create(child)
            if created:
                metrics.CHILDREN_CREATED.labels(KIND, child["kind"]).inc()
                CACHE.put_child(created)
        for job_name, patch in result.patch_jobs.items():
            CACHE.put_child(k.patch_job(namespace, job_name, patch))
        for job_name in result.delete_jobs:
            k.delete_job(namespace, job_name)
        if scrape_progress and result.status.get("phase") == "Running":
            _add_progress(result.status, pods)
        if result.status != old_status:
            updated = k.patch_status(PLURAL, namespace, name, result.status)
            if updated:
                CACHE.put_parent(updated)
        for type_, reason, message in result.events:
            k.event(body, type_, reason, message)
        metrics.observe_object(KIND, namespace, name, result.status.get("phase"), result.status.get("gpus") or 0)
        TICKER.track(namespace, name, result.status.get("phase"))
    if result.status.get("attempt") != old_status.get("attempt") and _depth < 2:
        _reconcile(namespace, name, False, _depth + 1)  # start the next attempt now, not at the next event


def _failed_creates(k: Kube, namespace: str, status: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[str]:
    """FailedCreate events, looked up only when the current Job has fewer pods than it wants."""
    current = next((j for j in jobs if j["metadata"]["name"] == status.get("jobName")), None)
    if current is None or (current.get("status") or {}).get("conditions"):
        return []
    created = parse_time(current["metadata"].get("creationTimestamp"))
    if created and (now() - created).total_seconds() < FAILED_CREATE_GRACE:
        return []  # the Job controller usually needs a moment: no event lookup for every new Job
    wanted = current["spec"].get("parallelism") or 1
    mine = [p for p in pods if _owned_by(p, {current["metadata"]["uid"]})]
    return k.failed_create_messages(namespace, current["metadata"]["name"]) if len(mine) < wanted and not current["spec"].get("suspend") else []


def _add_progress(status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    """Scrape rank 0's metrics endpoint into status.progress; a failed scrape keeps the last figures."""
    attempt = str(status.get("attempt", 0))
    ranks = [p for p in pods if (p["metadata"].get("labels") or {}).get("llmops.dev/attempt") == attempt and (p.get("status") or {}).get("podIP")]
    ranks.sort(key=lambda p: (p["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0"))
    if not ranks:
        return
    try:
        values = scrape(ranks[0]["status"]["podIP"], SETTINGS.runner_metrics_port, SETTINGS.scrape_timeout)
    except OSError as exc:
        log.debug("progress scrape of %s failed: %s", ranks[0]["metadata"]["name"], exc)
        return
    if values:
        status["progress"] = progress_status(values, parse_time(status.get("startTime")), now())


class Ticker:
    """Every interval: scrape progress of active jobs and resync them in case an event was missed.

    Not a Kopf timer: those put a finalizer on every object, and a finalizer
    keeps a FineTuneJob from being deleted while the operator is down.
    """

    def __init__(self):
        self.active: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llmops-tick")

    def retry(self, namespace: str, name: str) -> None:
        with self.lock:
            self.active.add((namespace, name))

    def track(self, namespace: str, name: str, phase: str | None) -> None:
        with self.lock:
            if phase in ("Pending", "Running"):
                self.active.add((namespace, name))
            else:
                self.active.discard((namespace, name))

    def run(self) -> None:
        while not self.stop.wait(SETTINGS.progress_interval):
            if peering.current().paused(kube()):
                continue  # a peer of higher priority is the active replica
            with self.lock:
                keys = sorted(self.active)
            list(self.pool.map(self._tick, keys))

    @staticmethod
    def _tick(key: tuple[str, str]) -> None:
        try:
            reconcile(*key, scrape_progress=True)
        except Exception:  # noqa: BLE001 - one object's trouble must not stop the others' ticks
            log.exception("periodic reconcile of %s/%s failed", *key)


TICKER = Ticker()


@kopf.on.startup()
def start_ticker(**_: Any) -> None:
    threading.Thread(target=TICKER.run, name="llmops-ticker", daemon=True).start()


@kopf.on.cleanup()
def stop_ticker(**_: Any) -> None:
    TICKER.stop.set()
    if _kube is not None:
        _kube.flush_events()  # a graceful exit posts what it has to tell


def _safely(namespace: str, name: str) -> None:
    """Reconcile from an event handler: a failure is retried by the ticker, not lost."""
    try:
        reconcile(namespace, name)
    except Exception:
        TICKER.retry(namespace, name)
        raise


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunejob_event(event: dict[str, Any], **_: Any) -> None:
    """Every watch event of a FineTuneJob (the initial listing after a restart too)."""
    obj = event["object"]
    obj.setdefault("apiVersion", f"{GROUP}/{VERSION}")  # items of an initial listing may lack them
    obj.setdefault("kind", KIND)
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    if event.get("type") == "DELETED":
        CACHE.forget_parent(namespace, name)
        metrics.forget_object(KIND, namespace, name)
        TICKER.track(namespace, name, None)
        return
    CACHE.put_parent(obj)
    _safely(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def child_event(event: dict[str, Any], **_: Any) -> None:
    obj = event["object"]
    obj.setdefault("kind", "Pod" if "containers" in (obj.get("spec") or {}) else "Job")
    if event.get("type") == "DELETED":
        CACHE.drop_child(obj)
    else:
        CACHE.put_child(obj)
    parent = Cache.parent_of(obj)
    if parent:
        _safely(*parent)
