"""Reading what pods say: why one failed, why one waits, what a runner reported at exit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..settings import LABEL_ATTEMPT

INVALID_INPUT_EXIT_CODE = 2  # the runners' contract: bad config or input, retrying cannot help
DISRUPTION_REASONS = {"Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated", "DeletionByTaintManager"}
MAX_MESSAGE = 600


@dataclass(frozen=True)
class PodFailure:
    reason: str
    message: str
    disrupted: bool = False  # node failure, eviction, preemption: not the workload's fault
    permanent: bool = False  # retrying cannot help


def of_attempt(pods: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
    """The pods of one attempt (one Job) of a Job-running object."""
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) == str(attempt)]


def rank_order(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods by completion index (node rank), rank 0 first; a single-node pod counts as rank 0."""

    def rank(pod: dict[str, Any]) -> int:
        index = (pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0")
        return int(index) if str(index).isdigit() else 0

    return sorted(pods, key=rank)


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if state:
            return state
    return None


def termination_report(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The runner's JSON summary from its termination message, if it wrote one."""
    state = _terminated(pod)
    text = (state or {}).get("message") or ""
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return report if isinstance(report, dict) else None


def _disrupted(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("reason") in DISRUPTION_REASONS:
        return True
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or [])


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def failure_of(pods: list[dict[str, Any]], job_condition: dict[str, Any]) -> PodFailure:
    """Why an attempt failed, from its pods (first failed rank first) or else the Job's own condition."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if any(_disrupted(p) for p in pods):
        victim = next(p for p in pods if _disrupted(p))
        return PodFailure("Disrupted", f"pod {victim['metadata']['name']} was disrupted ({(victim.get('status') or {}).get('reason') or 'DisruptionTarget'})", disrupted=True)
    for pod in failed:
        state = _terminated(pod) or {}
        report = termination_report(pod) or {}
        exit_code = state.get("exitCode")
        reason = report.get("reason") or (state.get("reason") if state.get("reason") not in (None, "Error") else None) or "RunnerFailed"
        message = report.get("message") or state.get("message") or f"container exited with code {exit_code}"
        return PodFailure(
            reason=str(reason),
            message=_short(f"pod {pod['metadata']['name']}: {message}"),
            permanent=exit_code == INVALID_INPUT_EXIT_CODE,
        )
    reason = job_condition.get("reason") or "JobFailed"
    return PodFailure(str(reason), _short(job_condition.get("message") or "the Job failed"))


def unschedulable_message(pod: dict[str, Any]) -> str | None:
    """The scheduler's words when it cannot place a pod (e.g. 'Insufficient nvidia.com/gpu')."""
    if (pod.get("status") or {}).get("phase") != "Pending" or (pod.get("spec") or {}).get("nodeName"):
        return None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return _short(c.get("message") or "Unschedulable")
    return None
