"""Status conditions as the Kubernetes API conventions describe them.

Pure functions over plain dicts (the wire form), so reconcilers can compute a
whole new status and tests can check it without a cluster.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

# Condition types used by the jobs.
SUCCEEDED = "Succeeded"  # job aggregate: True once the result is written
FAILED = "Failed"  # job aggregate: True when it will not succeed
SCHEDULED = "PodsScheduled"
RUNNING = "Running"
SUSPENDED = "Suspended"
RESOURCES_FIT = "ResourcesFit"  # the VRAM pre-flight


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    at: datetime,
) -> list[dict[str, Any]]:
    """Return conditions with one condition set.

    lastTransitionTime moves only when status changes, as the conventions ask:
    a new reason or message alone is not a transition.
    """
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    old = find(conditions, type_)
    transition = old["lastTransitionTime"] if old and old.get("status") == status_text and old.get("lastTransitionTime") else timestamp(at)
    new = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    others = [c for c in conditions or [] if c.get("type") != type_]
    return sorted([*others, new], key=lambda c: c["type"])


def changed(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Conditions of `new` whose status or reason differ from `old` (what deserves an Event)."""
    out = []
    for cond in new or []:
        before = find(old, cond["type"])
        if before is None or (before.get("status"), before.get("reason")) != (cond.get("status"), cond.get("reason")):
            out.append(cond)
    return out
