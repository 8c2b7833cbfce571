"""Is this replica the active one? Read from Kopf's peering object.

Kopf pauses its own handlers when a peer of higher (or equal) priority is alive.
Our periodic resync runs outside Kopf's handlers (a Kopf timer would put a
finalizer on every object, which blocks deletion while the operator is
down), so it asks the same question of the same object, with the same rule.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

PEERING_NAME = "llmops"


@dataclass
class Peering:
    identity: str
    priority: int
    standalone: bool
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide peering
    cache_seconds: float = 5.0
    _checked_at: float = 0.0
    _paused: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def paused(self, kube) -> bool:
        if self.standalone:
            return False
        with self._lock:
            if time.monotonic() - self._checked_at > self.cache_seconds:
                self._paused = any(self._outranked(self._peers(kube, ns)) for ns in (self.namespaces or [None]))
                self._checked_at = time.monotonic()
            return self._paused

    def _peers(self, kube, namespace: str | None) -> dict[str, Any]:
        try:
            if namespace is None:
                obj = kube.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", PEERING_NAME)
            else:
                obj = kube.custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", PEERING_NAME)
        except ApiException as exc:
            if exc.status == 404:
                return {}  # no peering object: Kopf runs every replica, and so do we
            raise
        return obj.get("status") or {}

    def _outranked(self, peers: dict[str, Any], now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        for identity, info in peers.items():
            if identity == self.identity or not isinstance(info, dict):
                continue
            lastseen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=timezone.utc)
            alive = lastseen + timedelta(seconds=int(info.get("lifetime", 60))) > now
            if alive and int(info.get("priority", 0)) >= self.priority:
                return True
        return False


_current: Peering | None = None


def configure(peering: Peering) -> None:
    global _current
    _current = peering


def current() -> Peering:
    return _current or Peering(identity="standalone", priority=0, standalone=True)
