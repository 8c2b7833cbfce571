"""The FineTuneJob controller: what the runtime needs to run FineTuneJobs.

plan.py (pure) decides, builders.py (pure) makes the children, preflight.py
is the VRAM pre-flight, progress.py reads the runner's metrics.
"""

from __future__ import annotations

from typing import Any

from ... import api, modelinfo
from ...runtime import joblife
from ...runtime.conditions import now, parse_time
from ...runtime.controller import Context, KindController
from ...runtime.metrics import Figure
from ...runtime.pods import of_attempt, rank_order
from .plan import Observed, plan
from ...runtime.scrape import scrape as scrape_metrics
from .progress import PREFIX, progress_status


def observe(ctx: Context, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]]) -> Observed:
    meta, status = body["metadata"], body.get("status") or {}
    at = now()
    model_config, gpu_memory = None, {}
    spec = body.get("spec") or {}
    cpu_only = (spec.get("resources") or {}).get("gpusPerNode") == 0  # no VRAM pre-flight: nothing to look up
    if not status.get("selectedMethod") and not cpu_only:  # the pre-flight runs once, on the first pass
        base = spec.get("baseModel") or {}
        model_config = modelinfo.fetch_config(base.get("uri", ""), base.get("revision"))
        gpu_memory = ctx.kube.gpu_memory_mib()
    jobs = joblife.gather(ctx.kube, body, owned, at)
    return Observed(body, jobs.jobs, jobs.pods, at, gpu_memory, model_config, jobs.failed_creates,
                    ctx.progress((body["kind"], meta["namespace"], meta["name"])))


def scrape(ctx: Context, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """status.progress from rank 0's metrics endpoint, or None when there is nothing to read yet."""
    status = body.get("status") or {}
    if status.get("phase") != "Running":
        return None
    ranks = [p for p in rank_order(of_attempt(owned["Pod"], status.get("attempt", 0))) if (p.get("status") or {}).get("podIP")]
    if not ranks:
        return None
    values = scrape_metrics(ranks[0]["status"]["podIP"], ctx.settings.runner_metrics_port, ctx.settings.scrape_timeout, PREFIX)
    return progress_status(values, parse_time(status.get("startTime")), now()) if values else None


def figures(status: dict[str, Any]) -> list[Figure]:
    """The finished run's final metrics (train and eval loss, throughput), as the runner reported them."""
    return [("", name, value) for name, value in ((status.get("result") or {}).get("metrics") or {}).items()]


CONTROLLER = KindController(kind=api.FINETUNE, children=("Job", "Service"), observe=observe, plan=plan, scrape=scrape, figures=figures)
