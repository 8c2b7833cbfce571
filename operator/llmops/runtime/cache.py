"""What the operator last saw of its objects and their children, fed by watch events.

Reconciles read from here instead of listing Jobs and pods on every pass: with
hundreds of jobs in a namespace, a LIST per reconcile makes the API server's
work grow with the square of the job count. Our own writes are put back at
once (write-through), so the next reconcile does not act on what it just changed.
"""

from __future__ import annotations

import copy
import threading
from collections import defaultdict
from typing import Any

from .settings import LABEL_NAME

Key = tuple[str, str]  # (namespace, name)


def _version(obj: dict[str, Any]) -> int | None:
    value = obj.get("metadata", {}).get("resourceVersion", "")
    return int(value) if str(value).isdigit() else None


def _newer(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Keep the newest copy: a watch event may arrive after our own write's response."""
    if old is None:
        return True
    a, b = _version(new), _version(old)
    return a is None or b is None or a >= b


class Cache:
    def __init__(self):
        self._lock = threading.Lock()
        self._parents: dict[Key, dict[str, Any]] = {}
        self._children: defaultdict[Key, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)

    # -- parents -------------------------------------------------------------
    def put_parent(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self._lock:
            if _newer(obj, self._parents.get(key)):
                self._parents[key] = copy.deepcopy(obj)

    def forget_parent(self, namespace: str, name: str) -> None:
        with self._lock:
            self._parents.pop((namespace, name), None)

    def parent(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._parents.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    # -- children --------------------------------------------------------------
    @staticmethod
    def parent_of(obj: dict[str, Any]) -> Key | None:
        name = (obj["metadata"].get("labels") or {}).get(LABEL_NAME)
        return (obj["metadata"]["namespace"], name) if name else None

    def put_child(self, obj: dict[str, Any]) -> None:
        parent = self.parent_of(obj)
        if parent is None:
            return
        key = (obj["kind"], obj["metadata"]["name"])
        with self._lock:
            if _newer(obj, self._children[parent].get(key)):
                self._children[parent][key] = copy.deepcopy(obj)

    def drop_child(self, obj: dict[str, Any]) -> None:
        parent = self.parent_of(obj)
        if parent is None:
            return
        with self._lock:
            self._children[parent].pop((obj["kind"], obj["metadata"]["name"]), None)
            if not self._children[parent]:
                del self._children[parent]

    def children(self, namespace: str, name: str, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            found = self._children.get((namespace, name), {})
            return [copy.deepcopy(obj) for (k, _), obj in sorted(found.items()) if k == kind]
