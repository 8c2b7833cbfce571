"""What the operator last saw of its objects and their children, fed by watch events.

Reconciles read from here instead of listing on every pass: with hundreds of
objects in a namespace, a LIST per reconcile makes the API server's work grow
with the square of the object count. Our own writes are put back at once
(write-through), so the next reconcile does not act on what it just changed.

Every object is keyed by (kind, namespace, name), so a FineTuneJob and a
CompressionJob of the same name never meet. Children are also indexed by the
UID of their controller owner: a parent finds its children by its own UID,
never by name, so a child left behind by a deleted namesake is not mistaken
for its own.

A watch can miss DELETED events: after a 410 Gone, or while a peered replica
is paused, Kopf lists again and only tells what exists. `replace()` reconciles
the cache against such a full listing, as a client-go informer does.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Iterable

Key = tuple[str, str, str]  # (kind, namespace, name)
TOMBSTONE_SECONDS = 600  # how long a deletion is remembered: longer than any listing takes


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the object's controller owner (what created it), if any."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy without what no plan reads: managedFields everywhere, a Job's pod template,
    a Pod's spec but its node and the claims it mounts (a server replica can load an adapter
    only from those). At a thousand jobs this is most of the operator's memory."""
    out = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "managedFields"}}
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        out["spec"] = {"nodeName": spec["nodeName"]} if spec.get("nodeName") else {}
        claims = [{"name": v["name"], "persistentVolumeClaim": {"claimName": v["persistentVolumeClaim"]["claimName"]}}
                  for v in spec.get("volumes") or [] if v.get("persistentVolumeClaim")]
        if claims:
            out["spec"]["volumes"] = claims
    elif obj.get("kind") == "Job":
        out["spec"] = {k: v for k, v in spec.items() if k != "template"}
    return copy.deepcopy(out)


def _version(obj: dict[str, Any] | None) -> int | None:
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion", "")
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
        self._objects: dict[Key, dict[str, Any]] = {}
        self._by_owner: dict[str, set[Key]] = {}
        # key → (resourceVersion of the deletion, when): a listing answered before a DELETED event
        # but applied after it must not bring the object back.
        self._tombstones: dict[Key, tuple[int, float]] = {}

    def put(self, obj: dict[str, Any]) -> bool:
        """Keep the object if it is newer than our copy; True when it told us something new.

        False for the echo of our own write (put here from the write's response) and
        for stale events: neither needs a reconcile.
        """
        key = key_of(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is not None and _version(old) is not None and _version(old) == _version(obj):
                return False
            tombstone = self._tombstones.get(key)
            if tombstone and (_version(obj) or 0) <= tombstone[0]:
                return False  # read (listed, or fetched) before its deletion, which we have already seen
            if _newer(obj, old):
                self._unindex(key, old)
                self._objects[key] = slim(obj)
                owner = controller_uid(obj)
                if owner:
                    self._by_owner.setdefault(owner, set()).add(key)
                return True
            return False

    def drop(self, kind: str, namespace: str, name: str, version: int | None = None) -> dict[str, Any] | None:
        """Forget an object; `version` is the resourceVersion of its deletion (a DELETED event's)."""
        key = (kind, namespace, name)
        with self._lock:
            old = self._objects.pop(key, None)
            self._unindex(key, old)
            if version is not None:
                now = time.monotonic()
                self._tombstones[key] = (version, now)
                if len(self._tombstones) > 1024:
                    self._tombstones = {k: t for k, t in self._tombstones.items() if now - t[1] < TOMBSTONE_SECONDS}
            return old

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def owned_by(self, uid: str, kind: str) -> list[dict[str, Any]]:
        """Objects of one kind whose controller owner has this UID, by name."""
        with self._lock:
            keys = sorted(k for k in self._by_owner.get(uid, ()) if k[0] == kind)
            return [copy.deepcopy(self._objects[k]) for k in keys]

    def keys(self, kind: str) -> list[Key]:
        with self._lock:
            return sorted(k for k in self._objects if k[0] == kind)

    def replace(self, kind: str, namespaces: Iterable[str] | None, items: list[dict[str, Any]], list_version: int | None) -> list[dict[str, Any]]:
        """Make the cache agree with a consistent listing of `kind` (in `namespaces`, or all).

        Objects missing from the listing were deleted unless the cache holds a
        copy newer than the listing (created after it). Returns the objects
        dropped, so the caller can tell their owners.
        """
        listed = {key_of(obj) for obj in items}
        scope = set(namespaces) if namespaces else None
        for obj in items:
            self.put(obj)  # not what was deleted after the listing saw it (tombstones)
        dropped = []
        with self._lock:
            if list_version is not None:  # the listing is newer than these deletions: they are settled
                self._tombstones = {k: t for k, t in self._tombstones.items() if k[0] != kind or t[0] > list_version}
            for key in [k for k in self._objects if k[0] == kind and (scope is None or k[1] in scope)]:
                if key in listed:
                    continue
                version = _version(self._objects[key])
                if list_version is not None and version is not None and version > list_version:
                    continue
                old = self._objects.pop(key)
                self._unindex(key, old)
                dropped.append(old)
        return dropped

    def _unindex(self, key: Key, old: dict[str, Any] | None) -> None:
        owner = controller_uid(old) if old else None
        if owner and owner in self._by_owner:
            self._by_owner[owner].discard(key)
            if not self._by_owner[owner]:
                del self._by_owner[owner]
