"""The life of a workload that runs as batch/v1 Jobs, one Job per attempt: pure.

Shared by every kind whose runner runs to completion (FineTuneJob,
CompressionJob). A kind describes its workload (`JobWorkload`) and gets:

- attempts: each group restart is a fresh Job (`<name>-<tag>-r1`, ...), so pods
  of a failed group never linger; `status.restarts` counts them against
  `backoffLimit`, and a failed rank fails the whole group;
- disruption (node loss, eviction, preemption) retried without counting;
- runner exit code 2 (bad input) failing at once with the runner's reason;
- `activeDeadlineSeconds`, a wall-clock limit from the first start across
  attempts, copied into each Job so it holds while the operator is down;
- suspend, and Kueue admission (a queued Job starts suspended; Kueue unsuspends);
- `FailedCreate` (the Job controller's words) and `Unschedulable` (the
  scheduler's) reported in status while pods cannot start;
- the runner's termination-message report handed to the kind on success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from . import conditions as cond
from .plan import Plan, StatusBuilder
from .pods import failure_of, of_attempt, rank_order, termination_report, unschedulable_message

FAILED_CREATE_GRACE = 5  # seconds a new Job may be without pods before we ask the API why
WARNING_REASONS = {"Unschedulable", "Restarting", "Disrupted", "DeadlineExceeded", "BackoffLimitExceeded", "FailedCreate"}


@dataclass(frozen=True)
class JobWorkload:
    """What the lifecycle needs to know of one object's spec."""

    pods: int  # pods per attempt (one per node)
    backoff_limit: int
    deadline: int | None  # spec.activeDeadlineSeconds
    suspend: bool
    queue: str | None  # Kueue LocalQueue
    job_name: Callable[[int], str]  # attempt → Job name
    # (attempt, the Job's activeDeadlineSeconds) → the attempt's children to create, its Job among them.
    children: Callable[[int, int | None], list[dict[str, Any]]]
    # Called with the first rank's termination report when an attempt completes.
    succeeded: Callable[[StatusBuilder, dict[str, Any]], None]
    started_message: str = "created Job {job} (attempt {attempt}); waiting for its pods"


@dataclass
class JobObservation:
    jobs: list[dict[str, Any]]  # every Job the object owns
    pods: list[dict[str, Any]]  # every pod of those Jobs
    failed_creates: list[str] = field(default_factory=list)  # FailedCreate events of the current Job, oldest first


def advance(work: JobWorkload, seen: JobObservation, status: StatusBuilder, out: Plan) -> None:
    """Move the workload one step: create, patch or delete Jobs, and set the status."""
    attempt = int(status.old.get("attempt") or 0)
    restarts = int(status.old.get("restarts") or 0)
    status.new.update(attempt=attempt, restarts=restarts)
    current_name = work.job_name(attempt)
    current = next((j for j in seen.jobs if j["metadata"]["name"] == current_name), None)
    status.new["jobName"] = current_name

    if _deadline_passed(work, status):
        if current and not _finished(current):
            out.delete.append(("Job", current_name))
        status.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={work.deadline}")
        return

    if current is None:
        out.create.extend(work.children(attempt, _deadline_for_new_job(work, status)))
        _waiting(work, status, "JobCreated", work.started_message.format(job=current_name, attempt=attempt))
        return

    pods = of_attempt(seen.pods, attempt)
    if _finished(current) and _pods_behind(current, pods):
        return  # the Job's verdict came first (another watch stream): its pods' reports come next
    if job_condition(current, "Complete"):
        report = next((r for r in (termination_report(p) for p in rank_order(pods)) if r), {})
        work.succeeded(status, report)
        return
    if job_condition(current, "Failed"):
        _failed_attempt(work, status, current, pods, attempt, restarts)
        return

    # An active (or suspended) attempt. Its other children (a multi-node job's headless Service)
    # are asked for again: one refused beside its Job (a quota, RBAC) must not stay missing while
    # the ranks wait for it. The runtime creates only those its cache lacks.
    out.create.extend(c for c in work.children(attempt, _deadline_for_new_job(work, status)) if c["kind"] != "Job")
    is_suspended = bool(current["spec"].get("suspend"))
    if work.suspend and not is_suspended:
        out.patch[("Job", current_name)] = {"spec": {"suspend": True}}
        is_suspended = True
    elif not work.suspend and is_suspended and not work.queue:
        out.patch[("Job", current_name)] = {"spec": {"suspend": False}}
        is_suspended = False
    if is_suspended:
        queued = bool(work.queue) and not work.suspend
        reason = "QueuedInKueue" if queued else "Suspended"
        message = f"waiting for Kueue queue {work.queue} to admit the job" if queued else "spec.suspend is true: no pods run"
        status.condition(cond.SUSPENDED, True, reason, message)
        status.condition(cond.RUNNING, False, reason, message)
        status.phase("Pending" if queued else "Suspended", message)
        return
    if cond.find(status.old.get("conditions"), cond.SUSPENDED):
        status.condition(cond.SUSPENDED, False, "Resumed", "spec.suspend is false")
    _active(work, status, current_name, pods, seen.failed_creates)
    deadline = _deadline_for_job(work, status, current)
    if deadline is not None and current["spec"].get("activeDeadlineSeconds") != deadline:
        # Kubernetes enforces it too, so the limit holds while the operator is down.
        out.patch.setdefault(("Job", current_name), {"spec": {}})["spec"]["activeDeadlineSeconds"] = deadline


def gather(kube: Any, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]], at: datetime) -> JobObservation:
    """What `advance` needs, from the children the runtime found; the one call that reads the API
    (the Job controller's FailedCreate events), and only while pods are missing."""
    job = wants_failed_create_lookup(body.get("status") or {}, owned["Job"], owned["Pod"], at)
    failed = kube.failed_create_messages(body["metadata"]["namespace"], job) if job else []
    return JobObservation(owned["Job"], owned["Pod"], failed)


def wants_failed_create_lookup(status: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]], at: datetime) -> str | None:
    """The current Job's name when it has fewer pods than it wants for a while (not suspended, not done).

    Looking up the Job controller's events costs a LIST: only when pods are missing.
    """
    current = next((j for j in jobs if j["metadata"]["name"] == status.get("jobName")), None)
    if current is None or (current.get("status") or {}).get("conditions") or current["spec"].get("suspend"):
        return None
    created = cond.parse_time(current["metadata"].get("creationTimestamp"))
    if created and (at - created).total_seconds() < FAILED_CREATE_GRACE:
        return None  # the Job controller usually needs a moment: no lookup for every new Job
    uid = current["metadata"].get("uid")
    mine = [p for p in pods if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])]
    return current["metadata"]["name"] if len(mine) < (current["spec"].get("parallelism") or 1) else None


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _finished(job: dict[str, Any]) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def _pods_behind(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A finished Job whose pods we still see running: the runner's report (its termination
    message) and the failure's reason are in the pods' final state, which has not reached us yet."""
    phases = [(p.get("status") or {}).get("phase") for p in pods]
    if job_condition(job, "Complete"):
        return any(ph != "Succeeded" for ph in phases)
    if (job_condition(job, "Failed") or {}).get("reason") == "DeadlineExceeded":
        return False  # the Job's own verdict says it all; its pods are being killed
    return bool(phases) and "Failed" not in phases and any(ph in ("Pending", "Running") for ph in phases)


def _waiting(work: JobWorkload, status: StatusBuilder, reason: str, message: str) -> None:
    if work.suspend:
        status.condition(cond.SUSPENDED, True, "Suspended", "spec.suspend is true: no pods run")
        status.phase("Suspended", "spec.suspend is true: no pods run")
    else:
        status.phase("Pending", message)
    status.condition(cond.RUNNING, False, reason, message)


def _active(work: JobWorkload, status: StatusBuilder, job: str, pods: list[dict[str, Any]], failed_creates: list[str]) -> None:
    """Report an unsuspended attempt. Pods still starting keep the status as it is:
    each status write costs a write and comes back as a watch event."""
    if len(pods) < work.pods and failed_creates:
        # Pods refused at admission (quota, policy, a missing PriorityClass): may heal, so not Failed.
        message = f"the Job cannot create its pods: {failed_creates[-1]}"
        status.condition(cond.RUNNING, False, "FailedCreate", message)
        status.phase("Pending", message)
        return
    blocked = [m for m in (unschedulable_message(p) for p in pods) if m]
    if blocked:
        message = f"pods cannot be scheduled: {blocked[0]}"
        status.condition(cond.SCHEDULED, False, "Unschedulable", message)
        status.condition(cond.RUNNING, False, "Unschedulable", message)
        status.phase("Pending", message)
        return
    phases = [(p.get("status") or {}).get("phase") for p in pods if not p["metadata"].get("deletionTimestamp")]
    if "Failed" in phases:
        return  # the Job controller is about to fail the attempt: its verdict comes next, not "starting"
    running = [ph for ph in phases if ph in ("Running", "Succeeded")]  # a rank that finished first still ran
    if len(running) >= work.pods:
        if not status.new.get("startTime"):
            status.new["startTime"] = cond.timestamp(status.at)
        message = f"{len(running)} of {work.pods} pods running"
        status.condition(cond.SCHEDULED, True, "Scheduled", f"{work.pods} of {work.pods} pods are on nodes")
        status.condition(cond.RUNNING, True, "PodsRunning", message)
        status.phase("Running", message)
        return
    previous = cond.find(status.old.get("conditions"), cond.RUNNING)
    if previous and previous["reason"] in ("Unschedulable", "FailedCreate", "PodsRunning", "Resumed", "Suspended", "QueuedInKueue"):
        # Something changed since (placed, admitted, a pod lost): say what we wait for now.
        message = f"{len(running)} of {work.pods} pods running; waiting for the rest"
        status.condition(cond.RUNNING, False, "PodsStarting", message)
        status.phase("Pending", message)


def _failed_attempt(work: JobWorkload, status: StatusBuilder, job: dict[str, Any], pods: list[dict[str, Any]], attempt: int, restarts: int) -> None:
    job_failed = job_condition(job, "Failed") or {}
    if job_failed.get("reason") == "DeadlineExceeded":
        status.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={work.deadline}")
        return
    failure = failure_of(pods, job_failed)
    if failure.disrupted:
        status.new["attempt"] = attempt + 1
        status.condition(cond.RUNNING, False, "Disrupted", f"attempt {attempt} was disrupted ({failure.message}); restarting the group without counting it")
        status.phase("Pending", f"restarting after a disruption: {failure.message}")
        return
    if failure.permanent:
        status.fail(failure.reason, failure.message)
        return
    if restarts >= work.backoff_limit:
        status.fail(failure.reason, f"{failure.message} (failed {restarts + 1} times; backoffLimit is {work.backoff_limit})")
        return
    status.new.update(attempt=attempt + 1, restarts=restarts + 1)
    message = f"attempt {attempt} failed ({failure.reason}: {failure.message}); restart {restarts + 1} of {work.backoff_limit}, resuming from the last checkpoint"
    status.condition(cond.RUNNING, False, "Restarting", message)
    status.phase("Pending", message)


# -- the deadline ---------------------------------------------------------------
# The limit counts from status.startTime, the first moment all pods of the first
# attempt ran. Kubernetes counts a Job's activeDeadlineSeconds from that Job's own
# status.startTime, so each Job gets `startTime + limit - jobStart`: computed from
# two fixed moments, it does not shrink with every reconcile (which would count
# the elapsed time twice and stop jobs at about half their limit).

def _deadline_for_new_job(work: JobWorkload, status: StatusBuilder) -> int | None:
    if work.deadline is None:
        return None
    started = cond.parse_time(status.new.get("startTime"))
    if started is None:
        return work.deadline  # corrected once the first pods run (see _deadline_for_job)
    return max(1, work.deadline - int((status.at - started).total_seconds()))


def _deadline_for_job(work: JobWorkload, status: StatusBuilder, job: dict[str, Any]) -> int | None:
    """The activeDeadlineSeconds this existing Job should have; None to leave it as it is."""
    if work.deadline is None:
        return None
    started = cond.parse_time(status.new.get("startTime"))
    job_started = cond.parse_time((job.get("status") or {}).get("startTime"))
    if started is None:
        return work.deadline  # not started yet: the Job's own clock is the limit's
    if job_started is None:
        return None  # the Job controller has not started it yet: nothing to correct
    return max(1, work.deadline - int((job_started - started).total_seconds()))


def _deadline_passed(work: JobWorkload, status: StatusBuilder) -> bool:
    started = cond.parse_time(status.new.get("startTime"))
    if work.deadline is None or started is None:
        return False
    return (status.at - started).total_seconds() > work.deadline
