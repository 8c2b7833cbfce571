"""One controller runtime for every kind: watch → cache → queue → plan → apply → status → events.

A kind plugs in a `KindController`: its API kind, the child resources it owns,
`observe()` (gather what its pure plan needs) and `plan()` (pure). The runtime
does the rest the same way for every kind:

- Watch events (Kopf `on.event`, watching only; no finalizer, no Kopf state on
  our objects) update the cache and queue the parent's key, (kind, ns, name).
- Nothing is reconciled before the cache holds a complete listing of every
  watched resource (the start-up barrier). When Kopf lists again (a 410 Gone,
  or resuming after a peering pause) the cache is reconciled against a fresh
  listing, so objects deleted in the gap do not live on in it.
- Workers run `observe`, `plan` and apply the plan: missing children are
  created (one replaced if another UID owns the name: never adopted), kept
  children server-side applied when what is built changes, patches and
  deletions applied, and the status merge-patched with a resourceVersion
  precondition so a newer state is never clobbered.
- A child the API server refuses is reported in status with the API server's
  words: a 400/422 is permanent (Failed), a 403 (quota, policy) is retried with
  backoff and says so.
- A replica that peering has paused does nothing at all.
- A ticker resyncs active objects and runs the kinds' progress scrapes in their
  own threads, so scrapes never hold a reconcile worker.
- An object that takes its input from another of our objects (a CompressionJob
  from a FineTuneJob) names it in `inputs`; any change of the input, its status
  or its deletion, reconciles the object at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import kopf
from kubernetes.client.exceptions import ApiException

from .. import api
from ..settings import LABEL_KIND, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, PREFIX, Settings
from . import conditions as cond
from . import metrics, peering
from .cache import Cache, Key, controller_uid
from .kube import Conflict, Kube
from .plan import Plan, StatusBuilder
from .resources import CHILD_RESOURCES, Resource, of_kind
from .workqueue import FIRST, RESYNC, URGENT, RetryLater, WorkQueue

log = logging.getLogger("llmops.runtime")

APPLIED_HASH_ANNOTATION = f"{PREFIX}/applied-hash"  # what we last applied: unchanged means no write
PARKED_RECHECK = 2.0  # seconds between looks at keys parked while paused
# Resynced by the ticker: jobs on their way, and services not (yet) serving everything they should.
ACTIVE_PHASES = ("Pending", "Running", "Suspended", "Loading", "Degraded")
REJECTED, FORBIDDEN = "Rejected", "Forbidden"  # reasons for a child the API server refused


@dataclass(frozen=True)
class KindController:
    """What a kind plugs into the runtime."""

    kind: api.Kind
    children: tuple[str, ...]  # kinds of the children it owns (pods of its Jobs and Deployments come along)
    observe: Callable[["Context", dict[str, Any], dict[str, list[dict[str, Any]]]], Any]
    plan: Callable[[Any, Settings], Plan]
    # Optional: read progress of an active object off its pods (runs on the ticker's threads).
    scrape: Callable[["Context", dict[str, Any], dict[str, list[dict[str, Any]]]], dict[str, Any] | None] | None = None
    # How a refused child shows in status; the default suits Job-running kinds.
    refused: Callable[[StatusBuilder, str, bool], None] | None = None
    # Optional: the keys of our objects this one reads (its inputs); their changes reconcile it.
    inputs: Callable[[dict[str, Any]], list[Key]] | None = None
    # Optional: the numbers its status reports, as (stage or "", figure, value), exported as llmops_status_figure.
    figures: Callable[[dict[str, Any]], list[metrics.Figure]] | None = None

    @property
    def resource(self) -> Resource:
        return of_kind(self.kind)


def default_refused(status: StatusBuilder, message: str, permanent: bool) -> None:
    if permanent:
        status.fail(REJECTED, message)
    else:
        status.condition(cond.RUNNING, False, FORBIDDEN, message)
        status.phase("Pending", message)


class Context:
    """What `observe` and `scrape` may use: the API, settings and the latest progress."""

    def __init__(self, runtime: "Runtime"):
        self._runtime = runtime

    @property
    def kube(self) -> Kube:
        return self._runtime.kube

    @property
    def settings(self) -> Settings:
        return self._runtime.settings

    def progress(self, key: Key) -> dict[str, Any] | None:
        return self._runtime.progress.get(key)

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Another of our objects as the cache holds it (an input named in `inputs`)."""
        return self._runtime.cache.get(kind, namespace, name)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new` (keys gone become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif old[k] != v:
            patch[k] = merge_patch(old[k], v)
    return patch


def content_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class Runtime:
    def __init__(self, controllers: list[KindController], settings: Settings, kube: Kube | None = None, namespaces: list[str] | None = None):
        self.controllers = {c.kind.kind: c for c in controllers}
        self.by_label = {c.kind.kind.lower(): c for c in controllers}
        self.settings = settings
        self._kube = kube
        self.namespaces = namespaces or []
        self.cache = Cache()
        self.context = Context(self)
        self.progress: dict[Key, dict[str, Any]] = {}
        self.active: set[Key] = set()
        self.parked: set[Key] = set()  # keys that came while paused: reconciled once we act again
        self._inputs: dict[Key, tuple[Key, ...]] = {}  # object → the objects it reads
        self._dependents: dict[Key, set[Key]] = {}  # object → the objects that read it
        self._unwritable: dict[str, set[str]] = {}  # kind → status fields its CRD schema prunes
        self._lock = threading.Lock()
        self._ticked_at = 0.0
        self._was_paused = False
        self._relist_wanted: set[str] = set()
        self._relist_cond = threading.Condition()
        self._stop = threading.Event()
        self.queue = WorkQueue(self._handle, workers=settings.workers, name="llmops-reconcile", first_only=settings.workers // 4)
        self._creates = ThreadPoolExecutor(max_workers=8, thread_name_prefix="llmops-create")
        self._scrapes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llmops-scrape")
        metrics.watch_queue(self.queue.depth)
        for kind in self.controllers:
            metrics.count_kind(kind)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube()
        return self._kube

    # -- what is watched ------------------------------------------------------------------
    def watched(self) -> list[tuple[Resource, str | None]]:
        """Every resource the cache follows, with its label selector."""
        ours = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        child_kinds = {k for c in self.controllers.values() for k in c.children} | {"Pod"}
        if "Deployment" in child_kinds:
            child_kinds.add("ReplicaSet")  # they carry the pod template's labels, ours among them
        child_kinds = sorted(child_kinds)
        return [(c.resource, None) for c in self.controllers.values()] + [(CHILD_RESOURCES[k], ours) for k in child_kinds]

    # -- start-up and the barrier -----------------------------------------------------------
    def start(self) -> None:
        """List everything once, then open the queue (blocking until the listing is done)."""
        for resource, selector in self.watched():
            self._list_into_cache(resource, selector)
        for kind in self.controllers:
            for key in self.cache.keys(kind):
                self.queue.add(key, _lane_of(self.cache.get(*key) or {}))
        self.queue.open()
        threading.Thread(target=self._relist_loop, name="llmops-relist", daemon=True).start()
        threading.Thread(target=self._tick_loop, name="llmops-ticker", daemon=True).start()
        log.info("cache filled from a full listing; reconciling")

    def stop(self) -> None:
        self._stop.set()
        self.queue.stop()
        with self._relist_cond:
            self._relist_cond.notify_all()
        if self._kube is not None:
            self._kube.flush_events()  # a graceful exit posts what it has to tell

    def _list_into_cache(self, resource: Resource, selector: str | None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        versions: list[int | None] = []
        for namespace in self.namespaces or [None]:
            found, version = self.kube.list(resource, namespace, selector)
            items += found
            versions.append(version)
        version = min((v for v in versions if v is not None), default=None)
        return self.cache.replace(resource.kind, self.namespaces or None, items, version)

    # -- watch events ---------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any], kind: str) -> None:
        obj = event["object"]
        obj.setdefault("kind", kind)  # items of a listing may lack it
        if event.get("type") is None:
            self._want_relist()  # Kopf is listing: something may have been missed
        if event.get("type") == "DELETED":
            version = obj["metadata"].get("resourceVersion", "")
            self.cache.drop(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], int(version) if version.isdigit() else None)
            if kind in self.controllers:
                self._forget(kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
                self._wake_dependents((kind, obj["metadata"]["namespace"], obj["metadata"]["name"]))
                return
        elif not self.cache.put(obj):
            return  # the echo of our own write, or older than what we hold: nothing new
        parent = self.parent_key(obj)
        if parent:
            self.queue.add(parent, _lane_of(obj) if kind in self.controllers else URGENT)
            if kind in self.controllers:
                self._wake_dependents(parent)

    def parent_key(self, obj: dict[str, Any]) -> Key | None:
        if obj["kind"] in self.controllers:
            return obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        obj_labels = obj["metadata"].get("labels") or {}
        controller = self.by_label.get(obj_labels.get(LABEL_KIND, ""))
        name = obj_labels.get(LABEL_NAME)
        return (controller.kind.kind, obj["metadata"]["namespace"], name) if controller and name else None

    def _want_relist(self) -> None:
        """List every watched kind again (debounced). A Kopf listing of one kind means a stream
        restarted (410 Gone, or resuming from a pause); the others may have missed events too:
        after a short pause Kopf does not always restart every stream cleanly."""
        with self._relist_cond:
            self._relist_wanted.update(r.kind for r, _ in self.watched())
            self._relist_cond.notify()

    def _relist_loop(self) -> None:
        selectors = {r.kind: (r, s) for r, s in self.watched()}
        while not self._stop.is_set():
            with self._relist_cond:
                while not self._relist_wanted and not self._stop.is_set():
                    self._relist_cond.wait()
            # Let Kopf's listing finish first; outside the lock, which Kopf's event loop takes.
            if self._stop.wait(1.0):
                return
            with self._relist_cond:
                wanted, self._relist_wanted = self._relist_wanted, set()
            for kind in sorted(wanted):
                try:
                    dropped = self._list_into_cache(*selectors[kind])
                except Exception as exc:  # noqa: BLE001 - this thread must outlive a slow or failed LIST
                    log.warning("re-listing %s failed (%s); trying again", kind, exc)
                    with self._relist_cond:
                        self._relist_wanted.add(kind)
                    continue
                for obj in dropped:
                    log.info("%s %s/%s was deleted while the watch was down", kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                    if kind in self.controllers:
                        self._forget(kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
                    elif (parent := self.parent_key(obj)):
                        self.queue.add(parent)

    def _forget(self, kind: str, namespace: str, name: str) -> None:
        metrics.forget_object(kind, namespace, name)
        self._track((kind, namespace, name), None)
        self._note_inputs((kind, namespace, name), ())

    def _note_inputs(self, key: Key, inputs: tuple[Key, ...]) -> None:
        with self._lock:
            if self._inputs.get(key, ()) == inputs:
                return
            for old in self._inputs.pop(key, ()):
                self._dependents.get(old, set()).discard(key)
            if inputs:
                self._inputs[key] = inputs
                for new in inputs:
                    self._dependents.setdefault(new, set()).add(key)

    def _wake_dependents(self, key: Key) -> None:
        with self._lock:
            waiting = sorted(self._dependents.get(key, ()))
        for dependent in waiting:
            self.queue.add(dependent)

    def _track(self, key: Key, phase: str | None) -> None:
        """Active objects are resynced and scraped by the ticker; the others keep no progress."""
        with self._lock:
            if phase in ACTIVE_PHASES:
                self.active.add(key)
            else:
                self.active.discard(key)
                self.progress.pop(key, None)

    # -- reconcile ----------------------------------------------------------------------------------
    def _handle(self, key: Key) -> None:
        if peering.current().paused(self.kube):
            # A peer of higher priority acts. Keep the key: our view of the peering may lag
            # Kopf's by a few seconds, and an event that arrives as we resume must not be lost.
            with self._lock:
                self.parked.add(key)
            log.debug("%s parked: a peer of higher priority acts", key)
            return
        kind = key[0]
        with metrics.reconcile_timer(kind):
            for _ in range(3):
                if self.reconcile(key):
                    return
            # Still behind the API server after refreshing: the watch events bring us back.

    def owned(self, body: dict[str, Any], controller: KindController) -> dict[str, list[dict[str, Any]]]:
        uid = body["metadata"]["uid"]
        found = {kind: self.cache.owned_by(uid, kind) for kind in controller.children}
        # Pods hang off Jobs, and off the ReplicaSets of Deployments.
        pod_owners = list(found.get("Job") or [])
        for deployment in found.get("Deployment") or []:
            pod_owners += self.cache.owned_by(deployment["metadata"]["uid"], "ReplicaSet")
        found["Pod"] = [p for owner in pod_owners for p in self.cache.owned_by(owner["metadata"]["uid"], "Pod")]
        return found

    def reconcile(self, key: Key) -> bool:
        """One pass for one object; False when the cache turned out to be behind and it should run again."""
        kind, namespace, name = key
        controller = self.controllers[kind]
        body = self.cache.get(kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self._forget(kind, namespace, name)
            return True
        body.setdefault("apiVersion", api.API_VERSION)
        if controller.inputs:
            self._note_inputs(key, tuple(controller.inputs(body)))
        owned = self.owned(body, controller)
        result = controller.plan(controller.observe(self.context, body, owned), self.settings)
        log.debug("%s: %s children %s → phase %s, create %s, patch %s, delete %s", key, sum(map(len, owned.values())),
                  {k: [c["metadata"]["name"] for c in v] for k, v in owned.items()}, result.status.get("phase"),
                  [c["metadata"]["name"] for c in result.create], list(result.patch), result.delete)
        status = result.status
        try:
            if not self._apply_children(body, result):
                return False
        except _Refused as refusal:
            refused = StatusBuilder(body, cond.now())
            (controller.refused or default_refused)(refused, refusal.message, refusal.permanent)
            told = refused.new == refused.old  # the same refusal again: said already
            self._write_status(controller, body, refused.new, [] if told else [("Warning", REJECTED if refusal.permanent else FORBIDDEN, refusal.message)])
            if not refusal.permanent:
                raise RetryLater(refusal.message) from None
            return True
        try:
            self._write_status(controller, body, status, result.events)
        except _Stale:
            return False
        if status.get("attempt") != (body.get("status") or {}).get("attempt"):
            self.queue.add(key)  # start the next attempt now, not at the next event
        return True

    def _write_status(self, controller: KindController, body: dict[str, Any], status: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
        meta = body["metadata"]
        old = body.get("status") or {}
        kind = controller.kind.kind
        status = {k: v for k, v in status.items() if k not in self._unwritable.get(kind, ())}
        if status != old:
            try:
                updated = self.kube.patch_status(controller.resource, meta["namespace"], meta["name"], merge_patch(old, status), meta.get("resourceVersion"))
            except Conflict:
                # Our copy is old: read the current one and plan again from it.
                fresh = self.kube.get(controller.resource, meta["namespace"], meta["name"])
                if fresh:
                    self.cache.put(fresh)
                raise _Stale() from None
            if updated:
                self.cache.put(updated)
                self._note_dropped(kind, status, updated.get("status") or {})
            # Our own write comes back as a watch event the cache already holds: tell the readers here.
            self._wake_dependents((controller.kind.kind, meta["namespace"], meta["name"]))
        for type_, reason, message in events:
            self.kube.event(body, type_, reason, message)
        phase = status.get("phase")
        figures = controller.figures(status) if controller.figures else []
        metrics.observe_object(controller.kind.kind, meta["namespace"], meta["name"], status, figures)
        self._track((controller.kind.kind, meta["namespace"], meta["name"]), phase)

    def _note_dropped(self, kind: str, wanted: dict[str, Any], stored: dict[str, Any]) -> None:
        """Fields the API server pruned from a status write: its CRD schema lacks them (our bug).
        Left in, every reconcile would write them again and be woken by its own write."""
        dropped = {k for k, v in wanted.items() if v is not None and k not in stored}
        if dropped:
            self._unwritable.setdefault(kind, set()).update(dropped)
            log.error("the API server dropped %s from a %s status: the CRD's status schema lacks them; no longer writing them",
                      sorted(dropped), kind)

    # -- children ------------------------------------------------------------------------------------
    def _apply_children(self, body: dict[str, Any], result: Plan) -> bool:
        """Create, apply, patch and delete children; False when the cache was behind (plan again)."""
        namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
        fresh = True
        todo = []
        for child in result.create:
            existing = self.cache.get(child["kind"], namespace, child["metadata"]["name"])
            if existing is None:
                todo.append(child)
            elif controller_uid(existing) != uid:
                self._replace_foreign(existing)
        # Independent creates go out together: one round trip of latency, not one per child.
        # A lone child (the usual case) is created right here, without a hop to another thread.
        create = lambda child: self._create(child, uid)  # noqa: E731
        for outcome in (self._creates.map(create, todo) if len(todo) > 1 else map(create, todo)):
            fresh = fresh and outcome
        for child in result.apply:
            self._apply(child, uid)
        for (kind, name), patch in result.patch.items():
            try:
                self.cache.put(self.kube.patch(CHILD_RESOURCES[kind], namespace, name, patch))
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for kind, name in result.delete:
            existing = self.cache.get(kind, namespace, name)
            self.kube.delete(CHILD_RESOURCES[kind], namespace, name, uid=(existing or {}).get("metadata", {}).get("uid"))
        return fresh

    def _create(self, child: dict[str, Any], uid: str) -> bool:
        resource = CHILD_RESOURCES[child["kind"]]
        try:
            created = self.kube.create(resource, child)
        except ApiException as exc:
            if exc.status == 409:
                existing = self.kube.get(resource, child["metadata"]["namespace"], child["metadata"]["name"])
                if existing is None:
                    return False  # gone again meanwhile: plan again
                if controller_uid(existing) != uid:
                    self._replace_foreign(existing)
                self.cache.put(existing)
                return False  # ours, but the cache had not seen it: plan again from what is there
            raise _Refused.from_api(exc, child) from None
        metrics.CHILDREN_CREATED.labels(child["metadata"]["labels"].get(LABEL_KIND, ""), child["kind"]).inc()
        self.cache.put(created)
        return True

    def _apply(self, child: dict[str, Any], uid: str) -> None:
        resource = CHILD_RESOURCES[child["kind"]]
        meta = child["metadata"]
        wanted = content_hash(child)
        existing = self.cache.get(child["kind"], meta["namespace"], meta["name"])
        if existing is not None and controller_uid(existing) != uid:
            self._replace_foreign(existing)
        if existing is not None and (existing["metadata"].get("annotations") or {}).get(APPLIED_HASH_ANNOTATION) == wanted:
            return  # what we built has not changed since we applied it
        child = {**child, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}), APPLIED_HASH_ANNOTATION: wanted}}}
        try:
            self.cache.put(self.kube.apply(resource, child))
        except ApiException as exc:
            raise _Refused.from_api(exc, child) from None

    def _replace_foreign(self, existing: dict[str, Any]) -> None:
        """A child of that name belongs to someone else (e.g. a deleted namesake): delete it, never adopt it."""
        meta = existing["metadata"]
        log.info("%s %s/%s belongs to another owner; deleting it before creating ours", existing["kind"], meta["namespace"], meta["name"])
        self.kube.delete(CHILD_RESOURCES[existing["kind"]], meta["namespace"], meta["name"], uid=meta.get("uid"))
        raise RetryLater(f"waiting for the old {existing['kind']} {meta['name']} to go")

    # -- the ticker --------------------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stop.wait(min(self.settings.progress_interval, PARKED_RECHECK)):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - this thread must outlive a failed peering read
                log.warning("resync tick failed; trying again", exc_info=True)

    def _tick(self) -> None:
        """Release keys parked while paused; every interval, resync active objects,
        scraping progress first where a kind can."""
        if peering.current().paused(self.kube):
            self._was_paused = True
            return
        if self._was_paused:  # acting again: whatever happened meanwhile, the cache must hear of it
            self._was_paused = False
            self._want_relist()
        with self._lock:
            parked, self.parked = self.parked, set()
        for key in sorted(parked):
            self.queue.add(key)
        if time.monotonic() - self._ticked_at < self.settings.progress_interval:
            return
        self._ticked_at = time.monotonic()
        with self._lock:
            keys = sorted(self.active)
        for key in keys:
            controller = self.controllers[key[0]]
            if controller.scrape is None:
                self.queue.add(key, RESYNC)
            else:
                self._scrapes.submit(self._scrape, controller, key)

    def _scrape(self, controller: KindController, key: Key) -> None:
        body = self.cache.get(*key)
        if body is None:
            return
        try:
            values = controller.scrape(self.context, body, self.owned(body, controller))
        except Exception:  # noqa: BLE001 - a failed scrape keeps the last figures
            log.debug("progress scrape of %s failed", key, exc_info=True)
            values = None
        if values:
            with self._lock:
                self.progress[key] = values
        self.queue.add(key, RESYNC)

    # -- Kopf -----------------------------------------------------------------------------------------
    def register(self) -> None:
        """Watch our kinds and our children with Kopf; nothing but watching."""
        for resource, selector in self.watched():
            labels = {LABEL_MANAGED_BY: MANAGED_BY} if selector else None

            async def handler(event: dict[str, Any], _kind: str = resource.kind, **_: Any) -> None:
                self.on_event(event, _kind)

            kopf.on.event(resource.group, resource.version, resource.plural, labels=labels, id=f"watch-{resource.plural}")(handler)

        @kopf.on.startup(id="llmops-runtime")
        def start(**_: Any) -> None:
            self.start()

        @kopf.on.cleanup(id="llmops-runtime")
        def stop(**_: Any) -> None:
            self.stop()


def _lane_of(obj: dict[str, Any]) -> int:
    """An object with no status was never reconciled: its first pass goes before everything else."""
    return URGENT if obj.get("status") else FIRST


class _Stale(RetryLater):
    """Our copy of the object was older than the API server's: plan again from the new one."""


class _Refused(Exception):
    """The API server refused a child: 400/422 are permanent, 403 (quota, policy) may heal."""

    def __init__(self, message: str, permanent: bool):
        super().__init__(message)
        self.message, self.permanent = message, permanent

    @classmethod
    def from_api(cls, exc: ApiException, child: dict[str, Any]) -> "_Refused":
        if exc.status not in (400, 403, 422):
            raise exc
        try:
            said = json.loads(exc.body or "{}").get("message") or exc.reason
        except json.JSONDecodeError:
            said = exc.reason
        what = f"the API server refused {child['kind']} {child['metadata']['name']}: {said}"
        if exc.status == 403:
            return cls(what + "; retrying with backoff", permanent=False)
        return cls(what, permanent=True)
