"""The InferenceService controller: what the runtime needs to run InferenceServices.

plan.py (pure) decides, builders.py (pure) makes the Deployment, Service, ConfigMap and
autoscaler; adapters.py loads and unloads adapters on the ready replicas while observing.
The model and the adapters may come from FineTuneJobs and CompressionJobs, so their changes
reconcile the services that read them (`inputs`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ... import api
from ...api.inference import InferenceServiceSpec
from ...runtime.cache import Key
from ...runtime.conditions import now
from ...runtime.controller import Context, KindController
from ...runtime.metrics import Figure
from ...runtime.resources import SCALED_OBJECT
from . import builders as build
from .adapters import sync_replica
from ...runtime.children import Location
from ...runtime.plan import StatusBuilder
from .plan import READY, Observed, fail, plan, resolve_adapters

CHILDREN = ("ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler")


def inputs(body: dict[str, Any]) -> list[Key]:
    spec = body.get("spec") or {}
    namespace = body["metadata"]["namespace"]
    model = spec.get("model") or {}
    keys = [(kind.kind, namespace, (model.get(field) or {}).get("name"))
            for kind, field in ((api.FINETUNE, "fineTuneJob"), (api.COMPRESSION, "compressionJob"))]
    keys += [(api.FINETUNE.kind, namespace, (a.get("fineTuneJob") or {}).get("name")) for a in spec.get("adapters") or []]
    return sorted({k for k in keys if k[2]})


def observe(ctx: Context, body: dict[str, Any], owned: dict[str, list[dict[str, Any]]]) -> Observed:
    namespace = body["metadata"]["namespace"]
    model = (body.get("spec") or {}).get("model") or {}
    job_ref = next(((kind, model[field]["name"]) for kind, field in ((api.FINETUNE, "fineTuneJob"), (api.COMPRESSION, "compressionJob"))
                    if (model.get(field) or {}).get("name")), None)
    seen = Observed(body, now(), deployment=next(iter(owned.get("Deployment") or []), None), pods=owned.get("Pod") or [],
                    model_job=ctx.lookup(job_ref[0].kind, namespace, job_ref[1]) if job_ref else None,
                    keda=(body.get("spec") or {}).get("autoscaling") is not None and ctx.kube.serves(SCALED_OBJECT))
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return seen  # the plan says what is wrong
    seen.adapter_jobs = {a.name: ctx.lookup(api.FINETUNE.kind, namespace, a.fine_tune_job.name)
                         for a in spec.adapters or [] if a.fine_tune_job}
    if spec.adapters is not None and (body.get("status") or {}).get("servedModelName"):
        wanted = {a.name: build.locate(a.uri, ctx.settings)
                  for a in resolve_adapters(spec, seen.adapter_jobs, (body.get("status") or {}).get("adapters")).ready}
        base = body["status"]["servedModelName"]
        seen.replicas = [sync_replica(pod["metadata"]["name"], pod["status"]["podIP"], base, _reachable(pod, wanted), ctx.settings.adapter_call_timeout)
                         for pod in owned.get("Pod") or [] if _serving(pod)]
    return seen


def _reachable(pod: dict[str, Any], wanted: dict[str, Location]) -> dict[str, str]:
    """The adapters this replica can read (name -> path): one on a claim it does not mount waits
    for the replicas of the rollout that mounts it (Loading), instead of failing on a missing path."""
    mounted = {v["persistentVolumeClaim"]["claimName"] for v in (pod.get("spec") or {}).get("volumes") or [] if v.get("persistentVolumeClaim")}
    return {name: where.path for name, where in wanted.items() if where.claim is None or where.claim in mounted}


def _serving(pod: dict[str, Any]) -> bool:
    """A replica that passes its readiness probe and is not going away."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and bool(status.get("podIP")) and not pod["metadata"].get("deletionTimestamp")


def refused(status: StatusBuilder, message: str, permanent: bool) -> None:
    """A child the API server refused: a service's way of saying it (no job conditions)."""
    if permanent:
        fail(status, "Rejected", message)
    else:
        status.condition(READY, False, "Forbidden", message)
        status.phase("Pending", message)


def figures(status: dict[str, Any]) -> list[Figure]:
    """Replicas wanted and serving: what "not Ready" means in numbers."""
    return [("", name, float(status[name])) for name in ("replicas", "readyReplicas") if status.get(name) is not None]


CONTROLLER = KindController(kind=api.INFERENCE, children=CHILDREN, observe=observe, plan=plan, inputs=inputs, refused=refused, figures=figures)
