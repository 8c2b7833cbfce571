"""Kopf handlers for FineTuneJob: thin triggers around one level-based reconcile.

Watch events (of the object, of its Jobs and pods, and the initial listing after
a restart) update a cache and put the object's key on a work queue; the periodic
tick does the same for active jobs. Worker threads take keys off the queue and run
the same `reconcile`: read the object and its children from the cache, `plan()`,
apply. Only watching handlers: no finalizer and no Kopf state on our objects, so a
FineTuneJob can be deleted while the operator is down (its children go with it
through owner references).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from .. import metrics, modelinfo, peering
from ..api import GROUP, VERSION
from ..cache import Cache
from ..conditions import now, parse_time
from ..kube import Kube
from ..progress import progress_status, scrape
from ..reconcile.finetune import Observed, plan
from ..reconcile.pods import of_attempt, rank_order
from ..settings import LABEL_KIND, LABEL_MANAGED_BY, MANAGED_BY, Settings
from ..workqueue import WorkQueue

KIND, PLURAL = "FineTuneJob", "finetunejobs"
CHILD_LABELS = {LABEL_KIND: "finetunejob", LABEL_MANAGED_BY: MANAGED_BY}
FAILED_CREATE_GRACE = 5  # seconds a new Job may be without pods before we ask why

log = logging.getLogger("llmops.finetune")
SETTINGS = Settings.from_env()
CACHE = Cache()
_kube: Kube | None = None
_queue: WorkQueue | None = None
_queue_lock = threading.Lock()


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


def enqueue(namespace: str, name: str) -> None:
    global _queue
    with _queue_lock:  # watch events, workers and the ticker all enqueue
        if _queue is None:
            _queue = WorkQueue(_handle, workers=SETTINGS.workers, name="llmops-finetune")
    _queue.add((namespace, name))


def _handle(key: tuple[str, str]) -> None:
    namespace, name = key
    reconcile(namespace, name, scrape_progress=TICKER.take_scrape(key))


def _owned_by(obj: dict[str, Any], uids: set[str]) -> bool:
    return any(ref.get("uid") in uids for ref in obj["metadata"].get("ownerReferences") or [])


def reconcile(namespace: str, name: str, scrape_progress: bool = False) -> None:
    """One pass for one FineTuneJob. The work queue guarantees one pass per object at a time."""
    with metrics.reconcile_timer(KIND):
        for _ in range(2):
            if _reconcile_once(namespace, name, scrape_progress):
                return
        # Still behind the API server after a refresh: the watch events will bring us back.


def _reconcile_once(namespace: str, name: str, scrape_progress: bool) -> bool:
    """Plan and apply; False when the cache turned out to be behind (a child we would create exists)."""
    k = kube()
    body = CACHE.parent(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        metrics.forget_object(KIND, namespace, name)
        TICKER.track(namespace, name, None)
        return True
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
        elif child["kind"] == "Job":
            # It exists but our cache has not seen it (e.g. just after a restart): read it and plan
            # again, rather than report "JobCreated" over a Job that may be running or finished.
            existing = k.read("Job", namespace, child["metadata"]["name"])
            if existing:
                CACHE.put_child(existing)
                return False
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
    if result.status.get("attempt") != old_status.get("attempt"):
        enqueue(namespace, name)  # start the next attempt now, not at the next event
    return True


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
    ranks = [p for p in rank_order(of_attempt(pods, status.get("attempt", 0))) if (p.get("status") or {}).get("podIP")]
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
    """Every interval: queue active jobs for a resync that also scrapes their progress.

    Not a Kopf timer: those put a finalizer on every object, and a finalizer
    keeps a FineTuneJob from being deleted while the operator is down.
    """

    def __init__(self):
        self.active: set[tuple[str, str]] = set()
        self.scrape: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def track(self, namespace: str, name: str, phase: str | None) -> None:
        with self.lock:
            if phase in ("Pending", "Running"):
                self.active.add((namespace, name))
            else:
                self.active.discard((namespace, name))
                self.scrape.discard((namespace, name))

    def take_scrape(self, key: tuple[str, str]) -> bool:
        with self.lock:
            if key in self.scrape:
                self.scrape.discard(key)
                return True
            return False

    def run(self) -> None:
        while not self.stop.wait(SETTINGS.progress_interval):
            if peering.current().paused(kube()):
                continue  # a peer of higher priority is the active replica
            with self.lock:
                keys = sorted(self.active)
                self.scrape.update(keys)
            for key in keys:
                enqueue(*key)


TICKER = Ticker()


@kopf.on.startup()
def start_ticker(**_: Any) -> None:
    threading.Thread(target=TICKER.run, name="llmops-ticker", daemon=True).start()


@kopf.on.cleanup()
def stop_ticker(**_: Any) -> None:
    TICKER.stop.set()
    if _kube is not None:
        _kube.flush_events()  # a graceful exit posts what it has to tell


@kopf.on.event(GROUP, VERSION, PLURAL)
async def finetunejob_event(event: dict[str, Any], **_: Any) -> None:
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
    enqueue(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def child_event(event: dict[str, Any], **_: Any) -> None:
    obj = event["object"]
    obj.setdefault("kind", "Pod" if "containers" in (obj.get("spec") or {}) else "Job")
    if event.get("type") == "DELETED":
        CACHE.drop_child(obj)
    else:
        CACHE.put_child(obj)
    parent = Cache.parent_of(obj)
    if parent:
        enqueue(*parent)
