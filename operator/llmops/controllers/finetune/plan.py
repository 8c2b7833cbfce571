"""Level-based reconciliation of a FineTuneJob: observed state in, plan out (pure).

Spec checks and the VRAM pre-flight first (nothing is created for a job that
cannot work), then the shared Job lifecycle (runtime.joblife) runs the attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from ...api.finetune import FineTuneJobSpec
from ...runtime import joblife
from ...runtime.children import InvalidLocation
from ...runtime.plan import Plan, StatusBuilder, finite_plan, valid_spec
from ...settings import Settings
from . import builders as build
from .preflight import WARNING_REASONS as PREFLIGHT_WARNINGS
from .preflight import preflight

WARNING_REASONS = joblife.WARNING_REASONS | PREFLIGHT_WARNINGS | {"InvalidSpec", "UnsupportedLocation"}


@dataclass
class Observed:
    body: dict[str, Any]
    jobs: list[dict[str, Any]]  # every Job this FineTuneJob owns
    pods: list[dict[str, Any]]  # every pod of those Jobs
    now: datetime
    gpu_memory_mib: dict[str, int] = field(default_factory=dict)  # product label → MiB, from the nodes
    model_config: dict[str, Any] | None = None  # the base model's config.json when reachable
    failed_creates: list[str] = field(default_factory=list)  # FailedCreate events of the current Job, oldest first
    progress: dict[str, Any] | None = None  # status.progress from the latest scrape of rank 0


def plan(observed: Observed, settings: Settings) -> Plan:
    return finite_plan(observed.body, observed.now, WARNING_REASONS, lambda status, out: _plan(observed, settings, status, out))


def _plan(observed: Observed, settings: Settings, status: StatusBuilder, out: Plan) -> None:
    body = observed.body
    spec = valid_spec(FineTuneJobSpec, body, status)
    if spec is None:
        return

    method = status.old.get("selectedMethod")
    if method is None:  # first pass: pre-flight before any pod exists
        method = preflight(observed.model_config, observed.gpu_memory_mib, spec, status)
        if method is None:
            return
    try:
        config = build.runner_config(body, spec, method, settings)
    except InvalidLocation as exc:
        status.fail("UnsupportedLocation", str(exc))
        return

    status.new["gpus"] = spec.resources.nodes * spec.resources.gpus_per_node
    name = body["metadata"]["name"]

    def children(attempt: int, deadline: int | None) -> list[dict[str, Any]]:
        extra = [build.headless_service(body, settings)] if spec.resources.nodes > 1 and attempt == 0 else []
        return [*extra, build.job(body, spec, config, settings, attempt, deadline)]

    work = joblife.JobWorkload(
        pods=spec.resources.nodes,
        backoff_limit=spec.backoff_limit,
        deadline=spec.active_deadline_seconds,
        suspend=spec.suspend,
        queue=spec.scheduling.queue_name if spec.scheduling else None,
        job_name=partial(build.job_name, name),
        children=children,
        succeeded=partial(_succeeded, spec.output.uri),
    )
    joblife.advance(work, joblife.JobObservation(observed.jobs, observed.pods, observed.failed_creates), status, out)
    if observed.progress and status.new.get("phase") == "Running":
        status.new["progress"] = observed.progress


def _succeeded(output_uri: str, status: StatusBuilder, report: dict[str, Any]) -> None:
    # The runner reports where it wrote inside its pod (/mnt/pvc/<claim>/...); the next resource of the
    # chain needs the location as the cluster names it, so a bare path gives way to spec.output.uri.
    reported = report.get("artifactUri") or report.get("outputPath") or ""
    result: dict[str, Any] = {"artifactUri": reported if "://" in reported else output_uri}
    metrics = {k: float(v) for k, v in (report.get("metrics") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metrics:
        result["metrics"] = metrics
    status.new["result"] = result
    progress = dict(status.new.get("progress") or {})
    if progress.get("totalSteps"):
        progress.update(step=progress["totalSteps"], percent="100%", eta="0s")
        status.new["progress"] = progress
    message = "training finished" + (f"; model written to {result['artifactUri']}" if result.get("artifactUri") else "")
    status.succeed("Completed", message)
