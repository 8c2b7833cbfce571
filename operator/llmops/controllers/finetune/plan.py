"""Level-based reconciliation of a FineTuneJob: observed state in, plan out.

`plan(observed)` is pure. It looks at the FineTuneJob and the children that
exist (Jobs of every attempt, their pods) and returns what to create, patch and
delete, the whole new status and the events worth telling. The handler applies
it. Running it twice on the same observation gives the same plan, which is what
makes restarts of the operator (even SIGKILL mid-way) harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from .. import conditions as cond
from .. import vram
from ..api.finetune import FineTuneJobSpec
from ..builders import finetune as build
from ..builders.common import InvalidLocation
from ..settings import Settings
from .pods import PodFailure, failure_of, of_attempt, rank_order, termination_report, unschedulable_message

TERMINAL = ("Succeeded", "Failed")


@dataclass
class Observed:
    body: dict[str, Any]
    jobs: list[dict[str, Any]]  # every Job this FineTuneJob owns
    pods: list[dict[str, Any]]  # every pod of those Jobs
    now: datetime
    gpu_memory_mib: dict[str, int] = field(default_factory=dict)  # product label → MiB, from the nodes
    model_config: dict[str, Any] | None = None  # the base model's config.json when reachable
    failed_creates: list[str] = field(default_factory=list)  # FailedCreate events of the current Job, oldest first


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    patch_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete_jobs: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)


class _Status:
    """Builds the new status from the old one, one condition at a time."""

    def __init__(self, observed: Observed):
        self.old = dict(observed.body.get("status") or {})
        self.new = dict(self.old)
        self.generation = observed.body["metadata"].get("generation")
        self.at = observed.now
        self.new["observedGeneration"] = self.generation

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.new["conditions"] = cond.set_condition(self.new.get("conditions"), type_, status, reason, message, self.generation, self.at)

    def phase(self, phase: str, message: str) -> None:
        self.new["phase"] = phase
        self.new["message"] = message

    def fail(self, reason: str, message: str) -> None:
        self.condition(cond.FAILED, True, reason, message)
        self.condition(cond.SUCCEEDED, False, reason, message)
        self.condition(cond.RUNNING, False, reason, "the job has ended")
        self.phase("Failed", message)
        self.new.setdefault("completionTime", cond.timestamp(self.at))


def plan(observed: Observed, settings: Settings) -> Plan:
    out = Plan()
    status = _Status(observed)
    try:
        _plan(observed, settings, status, out)
    finally:
        out.status = status.new
        out.events = _events(status.old, status.new) + out.events
    return out


def _plan(observed: Observed, settings: Settings, status: _Status, out: Plan) -> None:
    body = observed.body
    if status.old.get("phase") in TERMINAL:
        return  # A finished job stays finished: no re-create loop.
    try:
        spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        status.fail("InvalidSpec", f"spec.{where}: {first['msg']}")
        return

    method = status.old.get("selectedMethod")
    if method is None:  # first pass: pre-flight before any pod exists
        method = _preflight(observed, spec, status)
        if method is None:
            return
    try:
        config = build.runner_config(body, spec, method, settings)
    except InvalidLocation as exc:
        status.fail("UnsupportedLocation", str(exc))
        return

    attempt = int(status.old.get("attempt") or 0)
    restarts = int(status.old.get("restarts") or 0)
    status.new.update(attempt=attempt, restarts=restarts, gpus=spec.resources.nodes * spec.resources.gpus_per_node)
    current_name = build.job_name(body["metadata"]["name"], attempt)
    current = next((j for j in observed.jobs if j["metadata"]["name"] == current_name), None)
    status.new["jobName"] = current_name

    if _deadline_passed(spec, status):
        if current and not _finished(current):
            out.delete_jobs.append(current_name)
        status.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}")
        return

    if current is None:
        out.create.append(build.config_map(body, config))
        if spec.resources.nodes > 1:
            out.create.append(build.headless_service(body, settings))
        out.create.append(build.job(body, spec, settings, attempt, _deadline_left(spec, status)))
        _waiting(spec, status, "JobCreated", f"created Job {current_name} (attempt {attempt})")
        return

    pods = of_attempt(observed.pods, attempt)
    if _job_condition(current, "Complete"):
        _succeed(status, pods)
        return
    if _job_condition(current, "Failed"):
        _failed_attempt(spec, status, current, pods, attempt, restarts)
        return

    # An active (or suspended) attempt.
    wants_suspend = spec.suspend
    queued = bool(spec.scheduling and spec.scheduling.queue_name)
    is_suspended = bool(current["spec"].get("suspend"))
    if wants_suspend and not is_suspended:
        out.patch_jobs[current_name] = {"spec": {"suspend": True}}
        is_suspended = True
    elif not wants_suspend and is_suspended and not queued:
        out.patch_jobs[current_name] = {"spec": {"suspend": False}}
        is_suspended = False
    deadline = _deadline_left(spec, status)
    if deadline is not None and current["spec"].get("activeDeadlineSeconds") != deadline and not is_suspended:
        # Kubernetes enforces the deadline too, so it holds while the operator is down.
        out.patch_jobs.setdefault(current_name, {"spec": {}})["spec"]["activeDeadlineSeconds"] = deadline
    if is_suspended:
        reason = "QueuedInKueue" if queued and not wants_suspend else "Suspended"
        message = f"waiting for Kueue queue {spec.scheduling.queue_name} to admit the job" if reason == "QueuedInKueue" else "spec.suspend is true: no pods run"
        status.condition(cond.SUSPENDED, True, reason, message)
        status.condition(cond.RUNNING, False, reason, message)
        status.phase("Suspended" if wants_suspend else "Pending", message)
        return
    status.condition(cond.SUSPENDED, False, "Resumed", "spec.suspend is false")
    _active(spec, status, current, pods, observed.failed_creates)


def _preflight(observed: Observed, spec: FineTuneJobSpec, status: _Status) -> str | None:
    """Estimate memory per GPU; fail early when it cannot fit; resolve method auto. Returns the method or None."""
    shape = None
    if observed.model_config:
        try:
            shape = vram.shape_from_config(observed.model_config)
        except ValueError:
            shape = None
    if shape is None and spec.base_model.parameter_count:
        shape = vram.ModelShape(parameters=spec.base_model.parameter_count)
    res = spec.resources
    gpu_label = res.gpu_type
    available = vram.gpu_memory_gib(gpu_label, observed.gpu_memory_mib.get(gpu_label or "")) if gpu_label else None
    if available is None and observed.gpu_memory_mib and not gpu_label:
        # No type asked for: the pods may land on any GPU node, so plan for the smallest.
        smallest = min(observed.gpu_memory_mib.values())
        available, gpu_label = smallest / 1024, "the smallest GPU in the cluster"
    if shape is None or available is None:
        method = spec.method if spec.method != "auto" else "lora"
        why = "model size unknown (set spec.baseModel.parameterCount)" if shape is None else "GPU memory unknown (set spec.resources.gpuType)"
        status.condition(cond.RESOURCES_FIT, "Unknown", "EstimateUnavailable", f"VRAM pre-flight skipped: {why}")
        status.new["selectedMethod"] = method
        if spec.method == "auto":
            status.new["methodReason"] = f"auto chose lora, the safe default, because the {why}"
        return method
    template = _training_plan(spec, spec.method if spec.method != "auto" else "full")
    if spec.method == "auto":
        method, estimate, reason = vram.choose_method(shape, template, available)
        status.new["methodReason"] = reason
    else:
        method, estimate = spec.method, vram.estimate(shape, template)
    status.new["vramEstimate"] = {
        "method": method,
        "perGpuGib": round(estimate.total_gib, 1),
        "availableGib": round(available, 1),
        "breakdown": estimate.breakdown(),
    }
    if not estimate.fits(available):
        message = vram.insufficient_message(estimate, available, gpu_label)
        status.condition(cond.RESOURCES_FIT, False, "InsufficientGPUMemory", message)
        status.fail("InsufficientGPUMemory", message)
        return None
    status.condition(
        cond.RESOURCES_FIT, True, "EstimateFits",
        f"{method} needs about {estimate.total_gib:.1f} GiB per GPU of the {available:.1f} GiB available",
    )
    status.new["selectedMethod"] = method
    return method


def _training_plan(spec: FineTuneJobSpec, method: str) -> vram.TrainingPlan:
    ds = spec.deepspeed
    return vram.TrainingPlan(
        method=method,
        precision=spec.training.precision,
        per_device_batch_size=spec.training.per_device_batch_size,
        max_seq_length=spec.training.max_seq_length,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        zero_stage=ds.zero_stage if ds else 0,
        offload_optimizer=bool(ds and ds.offload_optimizer),
        offload_params=bool(ds and ds.offload_params),
        world_size=spec.resources.nodes * spec.resources.gpus_per_node,
        lora_r=spec.lora.r if spec.lora else 16,
        trainable_layers=spec.freeze.trainable_layers if spec.freeze else 2,
        num_virtual_tokens=spec.prompt_tuning.num_virtual_tokens if spec.prompt_tuning else 20,
    )


def _waiting(spec: FineTuneJobSpec, status: _Status, reason: str, message: str) -> None:
    if spec.suspend:
        status.condition(cond.SUSPENDED, True, "Suspended", "spec.suspend is true: no pods run")
        status.phase("Suspended", "spec.suspend is true: no pods run")
    else:
        status.phase("Pending", message)
    status.condition(cond.RUNNING, False, reason, message)


def _active(spec: FineTuneJobSpec, status: _Status, job: dict[str, Any], pods: list[dict[str, Any]], failed_creates: list[str]) -> None:
    nodes = spec.resources.nodes
    if len(pods) < nodes and failed_creates:
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
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    scheduled = [p for p in pods if (p.get("spec") or {}).get("nodeName")]
    if len(scheduled) >= nodes:
        status.condition(cond.SCHEDULED, True, "Scheduled", f"{len(scheduled)} of {nodes} pods are on nodes")
    if len(running) >= nodes:
        if not status.new.get("startTime"):
            status.new["startTime"] = cond.timestamp(status.at)
        message = f"{len(running)} of {nodes} pods running"
        status.condition(cond.RUNNING, True, "PodsRunning", message)
        status.phase("Running", message)
    else:
        message = f"{len(running)} of {nodes} pods running; waiting for the rest"
        status.condition(cond.RUNNING, False, "PodsStarting", message)
        status.phase("Pending", message)


def _succeed(status: _Status, pods: list[dict[str, Any]]) -> None:
    report = next((r for r in (termination_report(p) for p in rank_order(pods)) if r), {})
    result: dict[str, Any] = {}
    if report.get("artifactUri") or report.get("outputPath"):
        result["artifactUri"] = report.get("artifactUri") or report.get("outputPath")
    metrics = {k: float(v) for k, v in (report.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metrics:
        result["metrics"] = metrics
    status.new["result"] = result
    progress = dict(status.new.get("progress") or {})
    if progress.get("totalSteps"):
        progress.update(step=progress["totalSteps"], percent="100%", eta="0s")
        status.new["progress"] = progress
    message = "training finished" + (f"; model written to {result['artifactUri']}" if result.get("artifactUri") else "")
    status.condition(cond.SUCCEEDED, True, "Completed", message)
    status.condition(cond.FAILED, False, "Completed", message)
    status.condition(cond.RUNNING, False, "Completed", "the job has ended")
    status.phase("Succeeded", message)
    status.new.setdefault("completionTime", cond.timestamp(status.at))


def _failed_attempt(spec: FineTuneJobSpec, status: _Status, job: dict[str, Any], pods: list[dict[str, Any]], attempt: int, restarts: int) -> None:
    job_failed = _job_condition(job, "Failed") or {}
    if job_failed.get("reason") == "DeadlineExceeded":
        status.fail("DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}")
        return
    failure: PodFailure = failure_of(pods, job_failed)
    if failure.disrupted:
        # Lost to node failure, eviction or preemption: retry, but do not count it.
        status.new["attempt"] = attempt + 1
        status.condition(cond.RUNNING, False, "Disrupted", f"attempt {attempt} was disrupted ({failure.message}); restarting the group without counting it")
        status.phase("Pending", f"restarting after a disruption: {failure.message}")
        return
    if failure.permanent:
        status.fail(failure.reason, failure.message)
        return
    if restarts >= spec.backoff_limit:
        status.fail(failure.reason, f"{failure.message} (failed {restarts + 1} times; backoffLimit is {spec.backoff_limit})")
        return
    status.new.update(attempt=attempt + 1, restarts=restarts + 1)
    message = f"attempt {attempt} failed ({failure.reason}: {failure.message}); restart {restarts + 1} of {spec.backoff_limit}, resuming from the last checkpoint"
    status.condition(cond.RUNNING, False, "Restarting", message)
    status.phase("Pending", message)


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _finished(job: dict[str, Any]) -> bool:
    return bool(_job_condition(job, "Complete") or _job_condition(job, "Failed"))


def _deadline_left(spec: FineTuneJobSpec, status: _Status) -> int | None:
    if spec.active_deadline_seconds is None:
        return None
    started = cond.parse_time(status.new.get("startTime"))
    if started is None:
        return spec.active_deadline_seconds
    return max(1, spec.active_deadline_seconds - int((status.at - started).total_seconds()))


def _deadline_passed(spec: FineTuneJobSpec, status: _Status) -> bool:
    started = cond.parse_time(status.new.get("startTime"))
    if spec.active_deadline_seconds is None or started is None:
        return False
    return (status.at - started).total_seconds() > spec.active_deadline_seconds


def _events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The story `kubectl describe` tells: a condition turning True, a condition turning
    back (e.g. resumed), and every notable reason; not the initial False of each condition."""
    events = []
    for c in cond.changed(old.get("conditions"), new.get("conditions")):
        before = cond.find(old.get("conditions"), c["type"])
        flipped = before is not None and before.get("status") != c["status"]
        if c["status"] == "True" or flipped or c["reason"] in NOTABLE_REASONS:
            if c["type"] == cond.SUCCEEDED and c["status"] != "True" or c["type"] == cond.RUNNING and c["reason"] == "Completed":
                continue  # the mirror of Failed / the end of Running: told by the other condition
            kind = "Warning" if c["reason"] in WARNING_REASONS else "Normal"
            events.append((kind, c["reason"], c["message"]))
    return events


NOTABLE_REASONS_EXTRA = {"JobCreated"}
WARNING_REASONS = {
    "InsufficientGPUMemory", "Unschedulable", "Restarting", "Disrupted", "DeadlineExceeded",
    "InvalidSpec", "UnsupportedLocation", "BackoffLimitExceeded", "EstimateUnavailable", "FailedCreate",
}
NOTABLE_REASONS = WARNING_REASONS | NOTABLE_REASONS_EXTRA
