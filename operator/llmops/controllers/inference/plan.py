"""Level-based reconciliation of an InferenceService: observed state in, plan out (pure).

First the model: a URI, or a FineTuneJob / CompressionJob to wait for (condition
WaitingForModel names it). A CompressionJob whose quality gate failed is never served. Then the
children (ConfigMap, Deployment, Service, autoscaler) are server-side applied, and the status
is read off the Deployment, its pods and what each ready replica said about its adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...api.compression import LLM_COMPRESSOR_METHODS, ONNX_METHODS
from ...api.inference import InferenceServiceSpec
from ...runtime.children import InvalidLocation
from ...runtime.plan import Plan, StatusBuilder, transition_events, valid_spec
from ...settings import Settings
from . import builders as build
from .adapters import ReplicaAdapters

READY, MODEL_RESOLVED, PROGRESSING, WAITING_FOR_MODEL = "Ready", "ModelResolved", "Progressing", "WaitingForModel"
GATE_FAILED = "QualityGateFailed"
WARNING_REASONS = {"InvalidSpec", "UnsupportedLocation", "UnsupportedModel", "InputFailed", "InputNotFound",
                   "NotAModel", GATE_FAILED, "ProgressDeadlineExceeded", "AdapterFailed"}
ADAPTER_METHODS = ("lora", "qlora")


@dataclass
class Observed:
    body: dict[str, Any]
    now: datetime
    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    model_job: dict[str, Any] | None = None  # the FineTuneJob or CompressionJob spec.model names, if it exists
    adapter_jobs: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # adapter name -> its FineTuneJob
    replicas: list[ReplicaAdapters] = field(default_factory=list)  # one per ready replica, after the adapter pass
    keda: bool = False  # KEDA's ScaledObject is served by this cluster


@dataclass(frozen=True)
class AdapterPlan:
    """The adapters ready to serve, and the state of every adapter listed."""

    ready: list[build.ServedAdapter]
    states: list[dict[str, Any]]


def plan(observed: Observed, settings: Settings) -> Plan:
    out = Plan()
    status = StatusBuilder(observed.body, observed.now)
    try:
        _plan(observed, settings, status, out)
    finally:
        out.status = status.new
        out.events = transition_events(status.old, status.new, WARNING_REASONS) + _phase_events(status) + out.events
    return out


def _plan(observed: Observed, settings: Settings, status: StatusBuilder, out: Plan) -> None:
    body = observed.body
    spec = valid_spec(InferenceServiceSpec, body, status, fail=lambda reason, message: fail(status, reason, message))
    if spec is None:
        return
    model = resolve_model(spec, observed.model_job, status)
    if model is None:
        return
    if spec.engine == "vllm" and model.quantization == "onnx":
        fail(status, "UnsupportedModel", f"{model.uri} is an ONNX model, which vLLM cannot load: serve it with engine: transformers")
        return
    adapters = resolve_adapters(spec, observed.adapter_jobs, status.old.get("adapters"))
    try:
        children = [build.config_map(body, spec, model, adapters.ready, settings),
                    build.deployment(body, spec, model, adapters.ready, settings), build.service(body)]
    except InvalidLocation as exc:
        fail(status, "UnsupportedLocation", str(exc))
        return
    scaler = "None" if spec.autoscaling is None else "KEDA" if observed.keda else "HPA"
    if scaler == "HPA":
        children.append(build.hpa(body, spec.autoscaling))
    elif scaler == "KEDA":
        children.append(build.scaled_object(body, spec, spec.autoscaling, settings))
    # The autoscaler we no longer want goes (only one we made: the status says which).
    was = status.old.get("scaler")
    if was in ("HPA", "KEDA") and was != scaler:
        out.delete.append(("HorizontalPodAutoscaler" if was == "HPA" else "ScaledObject", build.name_of(body)))
    out.apply += children
    status.new.update(url=build.url(body), servedModelName=build.served_name(body, spec), modelUri=model.uri,
                      image=build.image(spec, settings), scaler=scaler)
    _serving_status(observed, spec, adapters, status)


def resolve_model(spec: InferenceServiceSpec, job: dict[str, Any] | None, status: StatusBuilder) -> build.ServedModel | None:
    """The model as a URI, or None while waiting for (or after failing on) the job that makes it."""
    source = spec.model
    if source.uri:
        status.new["modelSource"] = source.uri
        _resolved(status, f"serving {source.uri}")
        return build.ServedModel(source.uri)
    kind, ref = ("FineTuneJob", source.fine_tune_job) if source.fine_tune_job else ("CompressionJob", source.compression_job)
    what = f"{kind} {ref.name}"
    named = f"{kind.lower()}/{ref.name}"
    if status.old.get("modelSource") == named and status.old.get("modelUri"):
        # Resolved once: keep serving it whatever becomes of the job (even its deletion).
        return build.ServedModel(status.old["modelUri"], status.old.get("modelFormat"))
    status.new["modelSource"] = named
    job_status = (job or {}).get("status") or {}
    if job is None:
        _wait(status, "InputNotFound", f"{what} does not exist yet; waiting for it")
        return None
    gate = job_status.get("qualityGate") or {}
    if kind == "CompressionJob" and gate.get("passed") is False:
        # Never served, whatever else the job says: that is the point of the gate.
        fail(status, GATE_FAILED, f"{what} failed its quality gate ({gate.get('metric', 'quality')} drop "
                                   f"{_percent(gate.get('drop'))} > {_percent(gate.get('maxDrop'))}): its model is never served")
        return None
    phase = job_status.get("phase")
    if phase == "Failed":
        fail(status, "InputFailed", f"{what} failed: {job_status.get('message') or 'no reason given'}")
        return None
    if phase != "Succeeded":
        _wait(status, "InputNotReady", f"waiting for {what} to succeed (it is {phase or 'not started'})")
        return None
    artifact = job_status.get("artifactUri") or (job_status.get("result") or {}).get("artifactUri")
    if not artifact:
        fail(status, "InputFailed", f"{what} succeeded but reports no artifactUri")
        return None
    if kind == "FineTuneJob" and _method(job) in ADAPTER_METHODS:
        fail(status, "NotAModel", f"{what} trained a LoRA adapter, not a model: serve its base under spec.model "
                                   f"and list the job under spec.adapters, or merge it with a CompressionJob")
        return None
    model = build.ServedModel(artifact, _format(job) if kind == "CompressionJob" else None)
    status.new.update(modelUri=model.uri, modelFormat=model.quantization)
    status.condition(WAITING_FOR_MODEL, False, "InputReady", f"{what} succeeded")
    _resolved(status, f"serving {artifact} from {what}")
    return model


def resolve_adapters(spec: InferenceServiceSpec, jobs: dict[str, dict[str, Any] | None], old: list[dict[str, Any]] | None) -> AdapterPlan:
    """Each adapter as a URI, or its state while its FineTuneJob is not ready (or failed)."""
    resolved_before = {a["name"]: a for a in old or [] if a.get("uri")}
    ready, states = [], []
    for adapter in spec.adapters or []:
        if adapter.uri:
            ready.append(build.ServedAdapter(adapter.name, adapter.uri))
            states.append({"name": adapter.name, "source": adapter.uri, "uri": adapter.uri})
            continue
        source = f"finetunejob/{adapter.fine_tune_job.name}"
        before = resolved_before.get(adapter.name)
        if before and before.get("source") == source:
            ready.append(build.ServedAdapter(adapter.name, before["uri"]))
            states.append({"name": adapter.name, "source": source, "uri": before["uri"]})
            continue
        job = jobs.get(adapter.name)
        job_status = (job or {}).get("status") or {}
        what = f"FineTuneJob {adapter.fine_tune_job.name}"
        artifact = (job_status.get("result") or {}).get("artifactUri")
        state: dict[str, Any] = {"name": adapter.name, "source": source}
        if job is None:
            state.update(state="Pending", message=f"{what} does not exist yet")
        elif job_status.get("phase") == "Failed":
            state.update(state="Failed", message=f"{what} failed: {job_status.get('message') or 'no reason given'}")
        elif job_status.get("phase") != "Succeeded":
            state.update(state="Pending", message=f"waiting for {what} to succeed (it is {job_status.get('phase') or 'not started'})")
        elif _method(job) not in ADAPTER_METHODS:
            state.update(state="Failed", message=f"{what} trained a whole model ({_method(job)}), not an adapter: serve it under spec.model")
        elif not artifact:
            state.update(state="Failed", message=f"{what} succeeded but reports no artifactUri")
        else:
            ready.append(build.ServedAdapter(adapter.name, artifact))
            state["uri"] = artifact
        states.append(state)
    return AdapterPlan(ready, states)


def _serving_status(observed: Observed, spec: InferenceServiceSpec, adapters: AdapterPlan, status: StatusBuilder) -> None:
    deployment = observed.deployment or {}
    seen = deployment.get("status") or {}
    wanted = spec.replicas if spec.autoscaling is None else (deployment.get("spec") or {}).get("replicas", spec.autoscaling.min_replicas)
    ready = int(seen.get("readyReplicas") or 0)
    status.new.update(replicas=wanted, readyReplicas=ready)
    status.new["adapters"] = _adapter_states(adapters, observed.replicas) or None

    stuck = _deployment_condition(deployment, "Progressing")
    rolling = bool(deployment) and (
        (seen.get("observedGeneration") or 0) < (deployment["metadata"].get("generation") or 0)
        or int(seen.get("updatedReplicas") or 0) < wanted or int(seen.get("replicas") or 0) > wanted)
    if stuck and stuck.get("status") == "False":
        status.condition(PROGRESSING, False, stuck.get("reason") or "ProgressDeadlineExceeded", stuck.get("message") or "the rollout stalled")
    elif rolling or not deployment:
        status.condition(PROGRESSING, True, "RollingOut", f"{int(seen.get('updatedReplicas') or 0)}/{wanted} replicas updated")
    else:
        status.condition(PROGRESSING, False, "RolloutComplete", f"{wanted} replicas run the current spec")

    failed = [a for a in status.new["adapters"] or [] if a["state"] == "Failed"]
    loading = [a for a in status.new["adapters"] or [] if a["state"] in ("Loading", "Pending")]
    if wanted == 0:
        status.condition(READY, True, "ScaledToZero", "no replicas wanted")
        status.phase("Ready", "scaled to zero")
    elif ready == 0:
        why = _pods_waiting(observed.pods) or (stuck or {}).get("message") or "no replica is ready yet"
        status.condition(READY, False, "Loading", why)
        status.phase("Degraded" if stuck and stuck.get("status") == "False" else "Loading", why)
    elif failed:
        message = f"adapter {failed[0]['name']} failed: {failed[0].get('message', '')}"
        status.condition(READY, False, "AdapterFailed", message)
        status.phase("Degraded", message)
    elif ready < wanted:
        message = f"{ready}/{wanted} replicas ready"
        status.condition(READY, False, "ReplicasNotReady", message)
        status.phase("Degraded", message)
    elif loading:
        message = f"adapter {loading[0]['name']}: {loading[0].get('message') or 'loading'}"
        status.condition(READY, False, "AdaptersLoading", message)
        status.phase("Loading", message)
    else:
        message = f"{ready}/{wanted} replicas serving {status.new['servedModelName']}" + (
            f" and {len(adapters.states)} adapter(s)" if adapters.states else "")
        status.condition(READY, True, "Serving", message)
        status.phase("Ready", message)


def _adapter_states(adapters: AdapterPlan, replicas: list[ReplicaAdapters]) -> list[dict[str, Any]]:
    """Loaded when every ready replica serves it; Failed with the server's words; else Loading."""
    out = []
    for state in adapters.states:
        state = dict(state)
        if "state" not in state:
            refusals = [r.failed[state["name"]] for r in replicas if state["name"] in r.failed]
            if refusals:
                state.update(state="Failed", message=refusals[0])
            elif replicas and all(state["name"] in r.loaded for r in replicas):
                state.update(state="Loaded", message=f"on {len(replicas)} replica(s)")
            else:
                unreachable = next((r.unreachable for r in replicas if r.unreachable), None)
                state.update(state="Loading", message=unreachable or "waiting for a ready replica")
        out.append(state)
    return out


def _pods_waiting(pods: list[dict[str, Any]]) -> str | None:
    """Why a replica is not up: the first container waiting for something named (image pull, crash loop)."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
                return f"{pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    return None


def _deployment_condition(deployment: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _method(job: dict[str, Any]) -> str | None:
    return (job.get("status") or {}).get("selectedMethod") or (job.get("spec") or {}).get("method")


def _format(job: dict[str, Any]) -> str | None:
    """What the last quantize stage of a CompressionJob wrote: vLLM needs to know, the CPU engine too."""
    methods = [s["quantize"]["method"] for s in (job.get("spec") or {}).get("stages") or [] if s.get("quantize")]
    if methods and methods[-1] in ONNX_METHODS:
        return "onnx"
    if methods and methods[-1] in LLM_COMPRESSOR_METHODS:
        return "compressed-tensors"
    return None


def _percent(value: Any) -> str:
    return f"{float(value):.2%}" if isinstance(value, (int, float)) else "?"


def _resolved(status: StatusBuilder, message: str) -> None:
    status.condition(MODEL_RESOLVED, True, "Resolved", message)


def _wait(status: StatusBuilder, reason: str, message: str) -> None:
    status.condition(WAITING_FOR_MODEL, True, reason, message)
    status.condition(MODEL_RESOLVED, False, reason, message)
    status.condition(READY, False, reason, message)
    status.phase("Pending", message)


def fail(status: StatusBuilder, reason: str, message: str) -> None:
    status.condition(WAITING_FOR_MODEL, False, reason, message)
    status.condition(MODEL_RESOLVED, False, reason, message)
    status.condition(READY, False, reason, message)
    status.phase("Failed", message)


def _phase_events(status: StatusBuilder) -> list[tuple[str, str, str]]:
    """A service's phase changes worth a `kubectl describe` line: serving, and no longer serving."""
    old, new = status.old.get("phase"), status.new.get("phase")
    if new == old:
        return []
    if new == "Ready":
        return [("Normal", "Ready", status.new.get("message") or "serving")]
    if old == "Ready" and new in ("Degraded", "Loading"):
        return [("Warning", "NotReady", status.new.get("message") or "")]
    return []
