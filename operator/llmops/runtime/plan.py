"""What a kind's pure `plan()` returns, and the status builder every plan uses.

A plan looks at one object and the children it owns and says what to create,
apply, patch and delete, the whole new status and the events worth telling.
The runtime applies it. Running a plan twice on the same observation gives the
same plan, which is what makes restarts of the operator (even SIGKILL) harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from . import conditions as cond

SpecT = TypeVar("SpecT", bound=BaseModel)

TERMINAL = ("Succeeded", "Failed")


@dataclass
class Plan:
    # Children to create when missing (never updated: a Job's template is immutable).
    create: list[dict[str, Any]] = field(default_factory=list)
    # Children kept equal to what is built, with server-side apply (e.g. a Deployment).
    apply: list[dict[str, Any]] = field(default_factory=list)
    # (kind, name) → JSON merge patch for existing children.
    patch: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # (kind, name) of children to delete.
    delete: list[tuple[str, str]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)


class StatusBuilder:
    """Builds the new status from the old one, one condition at a time."""

    def __init__(self, body: dict[str, Any], at: datetime):
        self.old: dict[str, Any] = dict(body.get("status") or {})
        self.new: dict[str, Any] = dict(self.old)
        self.generation = body["metadata"].get("generation")
        self.at = at
        self.new["observedGeneration"] = self.generation

    @property
    def finished(self) -> bool:
        return self.old.get("phase") in TERMINAL

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.new["conditions"] = cond.set_condition(self.new.get("conditions"), type_, status, reason, message, self.generation, self.at)

    def phase(self, phase: str, message: str) -> None:
        self.new["phase"] = phase
        self.new["message"] = message

    def fail(self, reason: str, message: str) -> None:
        self._end(cond.FAILED, cond.SUCCEEDED, "Failed", reason, message)

    def succeed(self, reason: str, message: str) -> None:
        self._end(cond.SUCCEEDED, cond.FAILED, "Succeeded", reason, message)

    def _end(self, outcome: str, other: str, phase: str, reason: str, message: str) -> None:
        """A terminal state: its condition True, the other outcome False, no longer Running."""
        self.condition(outcome, True, reason, message)
        self.condition(other, False, reason, message)
        self.condition(cond.RUNNING, False, reason, "the job has ended")
        self.phase(phase, message)
        self.new.setdefault("completionTime", cond.timestamp(self.at))


def transition_events(old: dict[str, Any], new: dict[str, Any], warning_reasons: set[str]) -> list[tuple[str, str, str]]:
    """Events for warnings and terminal states only.

    Every event is a write to the API server; the happy path (created, started)
    is in the status and its conditions, so it is not told twice.
    """
    events: list[tuple[str, str, str]] = []
    for c in cond.changed(old.get("conditions"), new.get("conditions")):
        terminal = c["type"] in (cond.SUCCEEDED, cond.FAILED) and c["status"] == "True"
        if not (terminal or c["reason"] in warning_reasons) or any(e[1] == c["reason"] for e in events):
            continue  # a failure sets three conditions with one reason: tell it once
        warning = c["reason"] in warning_reasons or c["type"] == cond.FAILED
        events.append(("Warning" if warning else "Normal", c["reason"], c["message"]))
    return events


def finite_plan(body: dict[str, Any], at: datetime, warning_reasons: set[str], step: Callable[[StatusBuilder, Plan], None]) -> Plan:
    """The plan of an object that runs to an end: `step` fills it unless the object has ended
    (a finished job stays finished: no re-create loop); the events come from the status change."""
    out = Plan()
    status = StatusBuilder(body, at)
    try:
        if not status.finished:
            step(status, out)
    finally:
        out.status = status.new
        out.events = transition_events(status.old, status.new, warning_reasons) + out.events
    return out


def valid_spec(spec_type: type[SpecT], body: dict[str, Any], status: StatusBuilder,
               fail: Callable[[str, str], None] | None = None) -> SpecT | None:
    """The spec as its model, or None after failing the object with `InvalidSpec` naming the field
    (what the CRD schema cannot check, e.g. a spec written before a rule existed). `fail` says it
    the kind's way; by default the way of a job."""
    try:
        return spec_type.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        (fail or status.fail)("InvalidSpec", f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        return None
