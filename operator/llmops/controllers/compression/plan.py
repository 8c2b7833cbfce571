"""Level-based reconciliation of a CompressionJob: observed state in, plan out (pure).

First the input: a URI, or a FineTuneJob to wait for (condition WaitingForInput names it until
it succeeds; its failure fails this job). Then the shared Job lifecycle (runtime.joblife) runs
the chain, and the runner's report fills the per-stage results and the quality gate's verdict,
on success and on a failed gate alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from ...api import FINETUNE
from ...api.compression import CompressionJobSpec
from ...runtime import conditions as cond
from ...runtime import joblife
from ...runtime.children import InvalidLocation
from ...runtime.plan import Plan, StatusBuilder, finite_plan, valid_spec
from ...runtime.pods import of_attempt, rank_order, termination_report
from ...settings import Settings
from . import builders as build

WAITING_FOR_INPUT = "WaitingForInput"
GATE_FAILED = "QualityGateFailed"
WARNING_REASONS = joblife.WARNING_REASONS | {"InvalidSpec", "UnsupportedLocation", "InputFailed", "InputNotFound", GATE_FAILED}
RESULT_KEYS = ("sizeRatio", "parameterRatio", "qualityBefore", "qualityAfter", "qualityDrop", "greedyAgreement",
               "sizeBytesBefore", "sizeBytesAfter", "parametersBefore", "parametersAfter", "latencyMsBefore",
               "latencyMsAfter", "latencyRatio", "durationSeconds")


@dataclass
class Observed:
    body: dict[str, Any]
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    now: datetime
    input_job: dict[str, Any] | None = None  # the FineTuneJob named by spec.model.fineTuneJob, if it exists
    failed_creates: list[str] = field(default_factory=list)
    progress: dict[str, Any] | None = None  # scraped from the runner: {"stage": i, "stagesTotal": n}


def plan(observed: Observed, settings: Settings) -> Plan:
    return finite_plan(observed.body, observed.now, WARNING_REASONS, lambda status, out: _plan(observed, settings, status, out))


def _plan(observed: Observed, settings: Settings, status: StatusBuilder, out: Plan) -> None:
    body = observed.body
    spec = valid_spec(CompressionJobSpec, body, status)
    if spec is None:
        return
    source = resolve_input(spec, observed.input_job, status)
    if source is None:
        return
    try:
        config, locations = build.runner_config(body, spec, source, settings)
    except InvalidLocation as exc:
        status.fail("UnsupportedLocation", str(exc))
        return
    status.new.update(inputUri=source.uri, image=build.image(spec, settings), gpus=build.gpus(spec))
    if not status.new.get("stages"):
        status.new["stages"] = [{"name": name, "phase": "Pending"} for name in build.stage_names(spec)]
        status.new["progress"] = f"0/{len(spec.stages)}"

    work = joblife.JobWorkload(
        pods=1,
        backoff_limit=spec.backoff_limit,
        deadline=spec.active_deadline_seconds,
        suspend=spec.suspend,
        queue=spec.scheduling.queue_name if spec.scheduling else None,
        job_name=partial(build.job_name, body["metadata"]["name"]),
        children=lambda attempt, deadline: [build.job(body, spec, config, locations, settings, attempt, deadline)],
        succeeded=partial(_succeeded, spec.output.uri),
    )
    joblife.advance(work, joblife.JobObservation(observed.jobs, observed.pods, observed.failed_creates), status, out)
    if status.new.get("phase") == "Running" and observed.progress:
        _show_progress(status, observed.progress)
    if status.new.get("phase") == "Failed":
        # A failed gate (or a failed stage) still reports what every finished stage measured.
        report = _report(observed.pods, int(status.new.get("attempt") or 0))
        if report:
            _record(status, report)


def resolve_input(spec: CompressionJobSpec, input_job: dict[str, Any] | None, status: StatusBuilder) -> build.ResolvedInput | None:
    """The input as URIs, or None while waiting (or after failing) for a FineTuneJob."""
    ref = spec.model.fine_tune_job
    if ref is None:
        return build.ResolvedInput(spec.model.uri, spec.model.base_model_uri)
    name = ref.name
    status.new["inputJob"] = name
    if status.old.get("inputUri"):
        # Resolved once: the chain keeps that input, whatever becomes of the FineTuneJob (even its deletion).
        return build.ResolvedInput(status.old["inputUri"], status.old.get("inputBaseUri"))
    if input_job is None:
        before = cond.find(status.old.get("conditions"), WAITING_FOR_INPUT) or {}
        # Seen before: we waited for it to run, or said already that it went.
        seen = before.get("reason") == "InputNotReady" or "was deleted" in before.get("message", "")
        message = (f"FineTuneJob {name} was deleted while this job waited for it" if seen
                   else f"FineTuneJob {name} does not exist yet; waiting for it")
        _wait(status, "InputNotFound", message)
        return None
    phase = (input_job.get("status") or {}).get("phase")
    if phase == "Failed":
        why = (input_job.get("status") or {}).get("message") or "no reason given"
        status.condition(WAITING_FOR_INPUT, False, "InputFailed", f"FineTuneJob {name} failed")
        status.fail("InputFailed", f"the input FineTuneJob {name} failed: {why}")
        return None
    if phase != "Succeeded":
        _wait(status, "InputNotReady", f"waiting for FineTuneJob {name} to succeed (it is {phase or 'not started'})")
        return None
    artifact = ((input_job.get("status") or {}).get("result") or {}).get("artifactUri")
    if not artifact:
        status.fail("InputFailed", f"FineTuneJob {name} succeeded but reports no artifactUri")
        return None
    status.condition(WAITING_FOR_INPUT, False, "InputReady", f"FineTuneJob {name} succeeded: compressing {artifact}")
    base = spec.model.base_model_uri or ((input_job.get("spec") or {}).get("baseModel") or {}).get("uri")
    if base:
        status.new["inputBaseUri"] = base
    return build.ResolvedInput(artifact, base)


def _wait(status: StatusBuilder, reason: str, message: str) -> None:
    status.condition(WAITING_FOR_INPUT, True, reason, message)
    status.phase("Pending", message)


def _show_progress(status: StatusBuilder, progress: dict[str, Any]) -> None:
    stage, total = int(progress.get("stage", 0)), int(progress.get("stagesTotal", 0))
    stages = [dict(s) for s in status.new.get("stages") or []]
    for i, s in enumerate(stages):
        s["phase"] = "Succeeded" if i < stage else "Running" if i == stage else "Pending"
    status.new["stages"] = stages
    status.new["progress"] = f"{min(stage, total)}/{total}"


def _report(pods: list[dict[str, Any]], attempt: int) -> dict[str, Any] | None:
    return next((r for r in (termination_report(p) for p in rank_order(of_attempt(pods, attempt))) if r and r.get("stages")), None)


def _record(status: StatusBuilder, report: dict[str, Any]) -> None:
    """Per-stage results, the totals and the gate's verdict, from the runner's report."""
    done = {s["name"]: s for s in report.get("stages") or []}
    stages = []
    for s in status.new.get("stages") or []:
        finished = done.get(s["name"])
        stages.append({"name": s["name"], "phase": "Succeeded", "metrics": _numbers(finished.get("metrics"))} if finished
                      else {"name": s["name"], "phase": "Failed" if status.new.get("phase") == "Failed" else s.get("phase", "Pending")})
    status.new["stages"] = stages
    status.new["progress"] = f"{len(done)}/{len(stages)}"
    metrics = _numbers(report.get("metrics"))
    if metrics:
        status.new["metrics"] = {k: metrics[k] for k in RESULT_KEYS if k in metrics}
    gate = report.get("qualityGate")
    if gate:
        status.new["qualityGate"] = {k: gate[k] for k in ("metric", "before", "after", "drop", "maxDrop", "passed", "greedyAgreement") if gate.get(k) is not None}


def _numbers(values: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (values or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _succeeded(output_uri: str, status: StatusBuilder, report: dict[str, Any]) -> None:
    status.new["artifactUri"] = output_uri
    _record(status, report)
    metrics = status.new.get("metrics") or {}
    figures = [f"size ratio {metrics['sizeRatio']:.3g}" if "sizeRatio" in metrics else "",
               f"quality drop {metrics['qualityDrop']:.2%}" if "qualityDrop" in metrics else ""]
    detail = ", ".join(f for f in figures if f)
    status.succeed("Completed", f"compressed model written to {output_uri}" + (f" ({detail})" if detail else ""))
