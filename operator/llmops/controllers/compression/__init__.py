"""The CompressionJob controller: what the runtime needs to run CompressionJobs.

plan.py (pure) decides, builders.py (pure) makes the Job; the input may be a FineTuneJob's
output, so a FineTuneJob's changes reconcile the CompressionJobs that read it (`inputs`).
"""

from __future__ import annotations

from typing import Any

from ... import api
from ...runtime import joblife
from ...runtime.cache import Key
from ...runtime.conditions import now
from ...runtime.controller import Context, KindController
from ...runtime.metrics import Figure
from ...runtime.pods import of_attempt
from ...runtime.scrape import scrape as scrape_metrics
from .plan import Observed, plan

PREFIX = "llmops_compress_"


def inputs(body: dict[str, Any]) -> list[Key]:
    ref = ((body.get("spec") or {}).get("model") or {}).get("fineTuneJob")
    return [(api.FINETUNE.kind, body["metadata"]["namespace"], ref["name"])] if ref and ref.get("name") else []


def observe(ctx: Context, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]]) -> Observed:
    meta = body["metadata"]
    upstream = inputs(body)
    jobs = joblife.gather(ctx.kube, body, owned, now())
    return Observed(body, jobs.jobs, jobs.pods, now(),
                    input_job=ctx.lookup(*upstream[0]) if upstream else None,
                    failed_creates=jobs.failed_creates,
                    progress=ctx.progress((body["kind"], meta["namespace"], meta["name"])))


def scrape(ctx: Context, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Which stage runs, from the runner's metrics endpoint."""
    status = body.get("status") or {}
    if status.get("phase") != "Running":
        return None
    pods = [p for p in of_attempt(owned["Pod"], status.get("attempt", 0)) if (p.get("status") or {}).get("podIP")]
    if not pods:
        return None
    values = scrape_metrics(pods[0]["status"]["podIP"], ctx.settings.runner_metrics_port, ctx.settings.scrape_timeout, PREFIX)
    if "stages_total" not in values:
        return None
    return {"stage": int(values.get("stage", 0)), "stagesTotal": int(values["stages_total"])}


def figures(status: dict[str, Any]) -> list[Figure]:
    """The chain's and each stage's measured figures (sizes, qualities, latencies before/after) and
    the gate's verdict, so dashboards keep them after the runner's pod and its endpoint are gone."""
    out = [("", name, value) for name, value in (status.get("metrics") or {}).items()]
    for index, stage in enumerate(status.get("stages") or []):
        out += [(f"{index}-{stage['name']}", name, value) for name, value in (stage.get("metrics") or {}).items()]
    if (gate := status.get("qualityGate")) is not None:
        out.append(("", "qualityGatePassed", 1.0 if gate.get("passed") else 0.0))
    return out


CONTROLLER = KindController(kind=api.COMPRESSION, children=("Job",), observe=observe, plan=plan, scrape=scrape, inputs=inputs, figures=figures)
