"""Thin access to the Kubernetes API for the runtime: plain dicts in and out.

Requests go through the client's REST layer with plain dicts: the typed API of the kubernetes package validates every argument with pydantic
and deserialises every response into models, which costs more CPU than the
request itself. Every write is counted (`llmops_api_writes_total`), which is
how the scale benchmark tells writes per object.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ..settings import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, MANAGED_BY
from . import metrics
from .conditions import now, timestamp
from .resources import EVENT, NODE, Resource

log = logging.getLogger("llmops.kube")

FIELD_MANAGER = MANAGED_BY


class Conflict(Exception):
    """A write lost a race: the object changed since we read it (HTTP 409)."""


class Kube:
    """The API client the operator uses, with small helpers that return dicts."""

    def __init__(self, api_client: client.ApiClient | None = None, timeout: float = 30.0):
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = 32
            api_client = client.ApiClient(cfg)
        self.api = api_client
        self.custom = client.CustomObjectsApi(api_client)  # peering reads it
        self.timeout = timeout
        self._nodes_at = 0.0
        self._gpu_memory: dict[str, int] = {}
        self._nodes_lock = threading.Lock()
        self._served: dict[str, tuple[bool, float]] = {}
        self._events: queue.Queue = queue.Queue()
        for i in range(2):
            threading.Thread(target=self._post_events, name=f"llmops-events-{i}", daemon=True).start()

    # -- raw requests ---------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        """One API call; the decoded JSON answer. Raises ApiException on HTTP errors."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, auth_settings=["BearerToken"],
        )
        # The REST layer serialises the dict itself for JSON and YAML (apply) content types.
        resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.timeout)
        data = resp.read()
        if resp.status >= 400:
            raise ApiException(http_resp=resp)
        return json.loads(data) if data else {}

    def _write(self, method: str, resource: Resource, path: str, **kwargs) -> dict[str, Any]:
        metrics.API_WRITES.labels(method, resource.plural).inc()
        return self.request(method, path, **kwargs)

    # -- reads ------------------------------------------------------------------
    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.request("GET", resource.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj.setdefault("kind", resource.kind)
        obj.setdefault("apiVersion", resource.api_version)
        return obj

    def list(self, resource: Resource, namespace: str | None = None, label_selector: str | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """A consistent listing (all pages) and its resourceVersion."""
        items: list[dict[str, Any]] = []
        query = {"limit": "500", **({"labelSelector": label_selector} if label_selector else {})}
        version = None
        while True:
            page = self.request("GET", resource.path(namespace), query=query)
            for item in page.get("items") or []:
                item.setdefault("kind", resource.kind)
                item.setdefault("apiVersion", resource.api_version)
                items.append(item)
            meta = page.get("metadata") or {}
            version = version or meta.get("resourceVersion")
            if not meta.get("continue"):
                break
            query["continue"] = meta["continue"]
        return items, int(version) if str(version).isdigit() else None

    # -- writes -----------------------------------------------------------------
    def create(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create; raises ApiException (409 when it exists)."""
        created = self._write("POST", resource, resource.path(obj["metadata"]["namespace"]), body=obj,
                              query={"fieldManager": FIELD_MANAGER})
        created.setdefault("kind", resource.kind)
        return created

    def apply(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under our field manager: creates, or updates the fields we own."""
        meta = obj["metadata"]
        applied = self._write("PATCH", resource, resource.path(meta["namespace"], meta["name"]), body=obj,
                              query={"fieldManager": FIELD_MANAGER, "force": "true"},
                              content_type="application/apply-patch+yaml")  # JSON is YAML
        applied.setdefault("kind", resource.kind)
        return applied

    def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched = self._write("PATCH", resource, resource.path(namespace, name), body=patch,
                              content_type="application/merge-patch+json")
        patched.setdefault("kind", resource.kind)
        return patched

    def delete(self, resource: Resource, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete in the background; with `uid`, only that incarnation of the name. Gone already is fine."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._write("DELETE", resource, resource.path(namespace, name), body=options)
        except ApiException as exc:
            if exc.status not in (404, 409):  # 409: the precondition failed, a newer object has the name
                raise

    def patch_status(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None) -> dict[str, Any] | None:
        """Merge-patch status, only if the object is still at `resource_version`.

        With the resourceVersion in the patch the API server refuses (409) a write
        based on an old copy, so a newer status (another replica's, or the
        object's re-creation) is never clobbered. Returns None if the object is gone.
        """
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            updated = self._write("PATCH", resource, resource.path(namespace, name, "status"), body=body,
                                  content_type="application/merge-patch+json", query={"fieldManager": FIELD_MANAGER})
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise Conflict(f"{resource.kind} {namespace}/{name} changed since resourceVersion {resource_version}") from exc
            raise
        updated.setdefault("kind", resource.kind)
        return updated

    # -- cluster facts -------------------------------------------------------------
    def failed_create_messages(self, namespace: str, job: str) -> list[str]:
        """The Job controller's FailedCreate events for a Job: why its pods do not appear."""
        selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
        resp = self.request("GET", EVENT.path(namespace), query={"fieldSelector": selector})
        items = sorted(resp.get("items") or [], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return [e.get("message", "") for e in items]

    def gpu_memory_mib(self, max_age: float = 30.0) -> dict[str, int]:
        """GPU product label → memory (MiB), from the nodes' GPU feature discovery labels."""
        with self._nodes_lock:
            if time.monotonic() - self._nodes_at > max_age:
                found: dict[str, int] = {}
                nodes = self.request("GET", NODE.path(), query={"labelSelector": GPU_PRODUCT_LABEL})
                for node in nodes.get("items") or []:
                    node_labels = node["metadata"].get("labels") or {}
                    memory = node_labels.get(GPU_MEMORY_LABEL, "")
                    if memory.isdigit():
                        found[node_labels[GPU_PRODUCT_LABEL]] = int(memory)
                self._gpu_memory, self._nodes_at = found, time.monotonic()
            return dict(self._gpu_memory)

    def serves(self, resource: Resource, max_age: float = 15.0) -> bool:
        """Whether the API server serves this resource now (an optional add-on's CRD, e.g. KEDA's),
        from API discovery, asked again after `max_age` seconds."""
        with self._nodes_lock:
            seen = self._served.get(resource.path())
            if seen is None or time.monotonic() - seen[1] > max_age:
                base = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
                try:
                    found = any(r.get("name") == resource.plural for r in self.request("GET", base).get("resources") or [])
                except ApiException as exc:
                    if exc.status not in (403, 404, 503):
                        raise
                    found = False
                seen = (found, time.monotonic())
                self._served[resource.path()] = seen
            return seen[0]

    # -- events ----------------------------------------------------------------------
    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue a core/v1 Event on the object (what `kubectl describe` shows); posted in the background.

        Events are best effort: a reconcile should not wait for them, nor fail on them.
        """
        self._events.put((copy.deepcopy(body), type_, reason, message))

    def _post_events(self) -> None:
        while True:
            body, type_, reason, message = self._events.get()
            try:
                self._post_event(body, type_, reason, message)
            finally:
                self._events.task_done()

    def flush_events(self, timeout: float = 10.0) -> None:
        """Wait until queued events are posted (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._events.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def _post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        stamp = timestamp(now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": MANAGED_BY,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._write("POST", EVENT, EVENT.path(meta["namespace"]), body=event)
        except ApiException as exc:  # events are best effort: never fail a reconcile on them
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

