"""Thin access to the Kubernetes API for the reconcilers: plain dicts in and out."""

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

from .api import API_VERSION, GROUP, VERSION
from .conditions import now, timestamp
from .settings import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, MANAGED_BY

log = logging.getLogger("llmops.kube")


class Kube:
    """The API clients the operator uses, with small helpers that return dicts."""

    def __init__(self, api_client: client.ApiClient | None = None):
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = 32
            api_client = client.ApiClient(cfg)
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        # kind → (create, read) of the children the reconcilers make.
        self._child_apis = {
            "ConfigMap": (self.core.create_namespaced_config_map, self.core.read_namespaced_config_map),
            "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
            "Job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
        }
        self._nodes_at = 0.0
        self._gpu_memory: dict[str, int] = {}
        self._nodes_lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        for i in range(2):
            threading.Thread(target=self._post_events, name=f"llmops-events-{i}", daemon=True).start()

    @staticmethod
    def _json(response) -> dict[str, Any]:
        return json.loads(response.data)

    # -- our objects -----------------------------------------------------
    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch status; returns the updated object (None if it is gone)."""
        try:
            return self._json(self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}, _preload_content=False
            ))
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
            return None

    # -- children ----------------------------------------------------------
    def failed_create_messages(self, namespace: str, job: str) -> list[str]:
        """The Job controller's FailedCreate events for a Job: why its pods do not appear."""
        selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
        resp = self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
        items = sorted(self._json(resp)["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return [e.get("message", "") for e in items]

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create a child; an existing one is fine (reconciles are idempotent). The new object, or None if it existed."""
        namespace, kind = obj["metadata"]["namespace"], obj["kind"]
        create, _ = self._child_apis[kind]
        try:
            # _preload_content=False on every call: the typed client's response
            # deserialisation costs more CPU than the request itself.
            created = self._json(create(namespace, obj, _preload_content=False))
            created.setdefault("kind", kind)
            return created
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        _, read = self._child_apis[kind]
        try:
            obj = self._json(read(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj.setdefault("kind", kind)
        return obj

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        job = self._json(self.batch.patch_namespaced_job(name, namespace, patch, _preload_content=False))
        job.setdefault("kind", "Job")
        return job

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background", _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- cluster facts -----------------------------------------------------
    def gpu_memory_mib(self, max_age: float = 30.0) -> dict[str, int]:
        """GPU product label → memory (MiB), from the nodes' GPU feature discovery labels."""
        with self._nodes_lock:
            if time.monotonic() - self._nodes_at > max_age:
                resp = self.core.list_node(label_selector=GPU_PRODUCT_LABEL, _preload_content=False)
                found: dict[str, int] = {}
                for node in self._json(resp)["items"]:
                    node_labels = node["metadata"].get("labels") or {}
                    memory = node_labels.get(GPU_MEMORY_LABEL, "")
                    if memory.isdigit():
                        found[node_labels[GPU_PRODUCT_LABEL]] = int(memory)
                self._gpu_memory, self._nodes_at = found, time.monotonic()
            return dict(self._gpu_memory)

    # -- events ------------------------------------------------------------
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
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", API_VERSION),
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
            self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
        except ApiException as exc:  # events are best effort: never fail a reconcile on them
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)
