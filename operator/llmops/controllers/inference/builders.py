"""InferenceService → ConfigMap, Deployment, Service and autoscaler: pure functions.

Two engines run behind the same Service and port: vLLM's OpenAI server (GPU) and the CPU
engine of runners/llmops_runners/serve (docs/runner-contract.md, serving). The adapters a
replica starts with live in the ConfigMap, not in the pod template: adding or removing one
changes no template, so no rollout; the operator loads it on the running replicas instead
(adapters.py), and a replica that restarts reads the current list. A change of model, engine,
image or arguments does change the template, and rolls out with maxUnavailable 0.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from ...api import INFERENCE
from ...api.inference import Autoscaling, InferenceServiceSpec, VllmOptions
from ...runtime.children import (
    CONFIG_MOUNT,
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    SCRATCH,
    Location,
    child_name,
    claim_volumes,
    container_resources,
    labels,
    metadata,
    pod_scheduling,
    resolve_location,
)
from ...runtime.controller import content_hash
from ...settings import LABEL_ROLE, PREFIX, Settings

TAG = INFERENCE.short_names[0]  # lis: part of every child name, so kinds never collide
CONTAINER = "server"
PORT = 8000  # API, /health and /metrics on one port, as vLLM serves them
PORT_NAME = "http"
SERVE_CONFIG = "serve.json"  # the CPU engine's config (runner contract)
LORA_MODULES = "lora-modules"  # vLLM's --lora-modules at start, read by the container's shell
TOKEN_ENV = "HF_TOKEN"
CONFIG_HASH_ANNOTATION = f"{PREFIX}/server-config"  # what the template serves: a change rolls out
DEFAULT_MAX_LORAS = 4
PRE_STOP_SECONDS = 5
VLLM_CACHE = "/root/.cache"  # the vLLM image runs as root and keeps downloads and compiled kernels here

# The names HPA reads through a Prometheus adapter (`:` is not allowed in custom-metric names),
# and the PromQL KEDA runs, per spec.autoscaling.metric; both from the engine's vLLM-named series.
HPA_METRICS = {
    "concurrency": "vllm_num_requests_running",
    "waiting-requests": "vllm_num_requests_waiting",
    "kv-cache-utilization": "vllm_kv_cache_usage_perc",
    "rps": "vllm_request_success_per_second",
}
PROMQL = {
    "concurrency": "sum(vllm:num_requests_running{{{sel}}})",
    "waiting-requests": "sum(vllm:num_requests_waiting{{{sel}}})",
    "kv-cache-utilization": "sum(vllm:kv_cache_usage_perc{{{sel}}} or vllm:gpu_cache_usage_perc{{{sel}}})",
    "rps": "sum(rate(vllm:request_success_total{{{sel}}}[1m]))",
}


@dataclass(frozen=True)
class ServedModel:
    """The model to serve, resolved to a URI, and what the operator knows of its format."""

    uri: str
    quantization: str | None = None  # compressed-tensors, onnx, or None (the server detects it)


@dataclass(frozen=True)
class ServedAdapter:
    name: str
    uri: str


def name_of(body: dict[str, Any]) -> str:
    """The Deployment, Service and ConfigMap share one stable name."""
    return child_name(body["metadata"]["name"], TAG)


def url(body: dict[str, Any]) -> str:
    return f"http://{name_of(body)}.{body['metadata']['namespace']}.svc.cluster.local/v1"


def served_name(body: dict[str, Any], spec: InferenceServiceSpec) -> str:
    return spec.model.served_name or body["metadata"]["name"]


def image(spec: InferenceServiceSpec, settings: Settings) -> str:
    if spec.image and spec.image.image:
        return spec.image.image
    return settings.vllm_image if spec.engine == "vllm" else settings.serve_image


def lora_enabled(spec: InferenceServiceSpec) -> bool:
    """vLLM can load adapters at run time only if started with LoRA on: `adapters: []` asks for it
    with none yet, so a later addition loads live instead of restarting every replica."""
    return spec.adapters is not None


def locate(uri: str, settings: Settings) -> Location:
    return resolve_location(uri, settings.pvc_mount_root)


def vllm_args(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, settings: Settings) -> list[str]:
    """`vllm serve` arguments: model, name, parallelism, memory, dtype, quantization, LoRA, extras."""
    options = spec.vllm or VllmOptions()
    where = locate(model.uri, settings)
    args = [where.path, "--served-model-name", served_name(body, spec), "--host", "0.0.0.0", "--port", str(PORT),
            "--tensor-parallel-size", str(options.tensor_parallel_size),
            "--gpu-memory-utilization", f"{options.gpu_memory_utilization:g}", "--dtype", options.dtype]
    if where.hub_id and spec.model.revision:
        args += ["--revision", spec.model.revision]
    if options.max_model_len:
        args += ["--max-model-len", str(options.max_model_len)]
    quantization = options.quantization or model.quantization
    if quantization:
        args += ["--quantization", quantization]
    args.append("--enable-prefix-caching" if options.enable_prefix_caching else "--no-enable-prefix-caching")
    if lora_enabled(spec):
        args += ["--enable-lora", "--max-loras", str(options.max_loras or DEFAULT_MAX_LORAS)]
    return args + list(options.extra_args or [])


def vllm_lora_modules(adapters: list[ServedAdapter], settings: Settings) -> str:
    """The --lora-modules a starting replica loads (the live ones are loaded by the operator)."""
    if not adapters:
        return ""
    return "--lora-modules " + " ".join(f"{a.name}={locate(a.uri, settings).path}" for a in adapters)


def serve_config(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, adapters: list[ServedAdapter], settings: Settings) -> dict[str, Any]:
    """The CPU engine's config (docs/runner-contract.md, serving runner)."""
    where = locate(model.uri, settings)
    return {
        "model": {"path": where.path, "revision": spec.model.revision if where.hub_id else None,
                  "tokenEnv": TOKEN_ENV if spec.model.token_secret_ref else None},
        "servedModelName": served_name(body, spec),
        "adapters": [{"name": a.name, "path": locate(a.uri, settings).path} for a in adapters],
        "host": "0.0.0.0",
        "port": PORT,
    }


def config_map(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, adapters: list[ServedAdapter], settings: Settings) -> dict[str, Any]:
    if spec.engine == "vllm":
        data = {LORA_MODULES: vllm_lora_modules(adapters, settings)}
    else:
        data = {SERVE_CONFIG: json.dumps(serve_config(body, spec, model, adapters, settings), indent=1, sort_keys=True)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(body, name_of(body)), "data": data}


def _template_config(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, settings: Settings) -> str:
    """A hash of what a replica serves, adapters left out: it changes the template when the model changes."""
    return content_hash({"engine": spec.engine, "config": serve_config(body, spec, model, [], settings)})


def _probes(spec: InferenceServiceSpec) -> dict[str, Any]:
    """Startup gets the whole loading budget; liveness and readiness only start after it."""
    health = {"httpGet": {"path": "/health", "port": PORT_NAME}, "timeoutSeconds": 5}
    period = 10
    return {
        "startupProbe": {**health, "periodSeconds": period, "failureThreshold": math.ceil(spec.startup_timeout_seconds / period)},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4},
    }


def _shared_memory(spec: InferenceServiceSpec) -> str:
    """NCCL between tensor-parallel workers goes through /dev/shm: give it room."""
    if spec.resources.shared_memory:
        return str(spec.resources.shared_memory)
    tp = (spec.vllm or VllmOptions()).tensor_parallel_size if spec.engine == "vllm" else 1
    return f"{8 * tp}Gi" if tp > 1 else "1Gi"


def _container(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, settings: Settings, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    if spec.model.token_secret_ref:  # by reference: the value never leaves the Secret
        ref = spec.model.token_secret_ref
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.engine == "vllm":
        if lora_enabled(spec):
            env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
        # The shell adds the ConfigMap's --lora-modules to the arguments when the replica starts.
        command = ["/bin/sh", "-c", f'exec vllm serve "$@" $(cat {CONFIG_MOUNT}/{LORA_MODULES})', "vllm"]
        args = vllm_args(body, spec, model, settings)
        security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    else:
        env.append({"name": "HOME", "value": SCRATCH})
        command = ["python", "-m", "llmops_runners.serve"]
        args = ["--config", f"{CONFIG_MOUNT}/{SERVE_CONFIG}"]
        security = copy.deepcopy(CONTAINER_SECURITY_CONTEXT)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image(spec, settings),
        "command": command,
        "args": args,
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT}],
        "resources": container_resources(spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
        "volumeMounts": mounts,
        "securityContext": security,
        # Serve on while the Service's endpoints drop this replica: a request routed to it in
        # that moment is answered, not refused (the server stops listening only after this).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        **_probes(spec),
    }
    if spec.image and spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    return container


def deployment(body: dict[str, Any], spec: InferenceServiceSpec, model: ServedModel, adapters: list[ServedAdapter], settings: Settings) -> dict[str, Any]:
    """The server's Deployment. Without autoscaling it sets the replicas; with it, it leaves them
    to the autoscaler (server-side apply: a field we do not send is not ours to fight over)."""
    name = name_of(body)
    locations = [locate(model.uri, settings)] + [locate(a.uri, settings) for a in adapters]
    volumes, mounts = claim_volumes(locations, set(), settings.pvc_mount_root)
    cache_path = VLLM_CACHE if spec.engine == "vllm" else SCRATCH
    volumes += [
        {"name": "config", "configMap": {"name": name}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _shared_memory(spec)}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts += [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": cache_path},
    ]
    meta = spec.pod_metadata
    selector = labels(body["kind"], body["metadata"]["name"])
    pod_labels = {**(meta.labels if meta and meta.labels else {}), **selector, LABEL_ROLE: "server"}
    annotations = {
        **(meta.annotations if meta and meta.annotations else {}),
        "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics",
        CONFIG_HASH_ANNOTATION: _template_config(body, spec, model, settings),
    }
    pod_spec: dict[str, Any] = {
        "containers": [_container(body, spec, model, settings, mounts)],
        "volumes": volumes,
        "enableServiceLinks": False,  # hundreds of Services must not become env vars of the server
        "automountServiceAccountToken": False,  # the server never calls the API: no credential in the pod
        "terminationGracePeriodSeconds": 30,
        **pod_scheduling(spec.resources.gpu_type, spec.scheduling.to_wire() if spec.scheduling else None, spec.resources.gpus),
    }
    if spec.engine == "transformers":  # our runner image: non-root, read-only root filesystem
        pod_spec["securityContext"] = copy.deepcopy(POD_SECURITY_CONTEXT)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # A new replica must be ready before an old one goes: serving never drops to zero.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "progressDeadlineSeconds": spec.startup_timeout_seconds + 300,
        "revisionHistoryLimit": 3,
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        deployment_spec["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(body, name), "spec": deployment_spec}


def service(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(body, name_of(body)),
        "spec": {
            "selector": labels(body["kind"], body["metadata"]["name"]),
            "ports": [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def hpa(body: dict[str, Any], scaling: Autoscaling) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the engine's per-pod series (served by a Prometheus adapter)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(body, name_of(body)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of(body)},
            "minReplicas": max(1, scaling.min_replicas),  # an HPA cannot scale to zero (KEDA can)
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": HPA_METRICS[scaling.metric]},
                "target": {"type": "AverageValue", "averageValue": f"{scaling.target:g}"},
            }}],
        },
    }


def scaled_object(body: dict[str, Any], spec: InferenceServiceSpec, scaling: Autoscaling, settings: Settings) -> dict[str, Any]:
    """A KEDA ScaledObject: the Prometheus scaler runs the query over every replica of this service;
    KEDA divides by the threshold, so `target` stays per replica."""
    selector = f'namespace="{body["metadata"]["namespace"]}",model_name="{served_name(body, spec)}"'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(body, name_of(body)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of(body)},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [{"type": "prometheus", "metadata": {
                "serverAddress": settings.prometheus_url,
                "query": PROMQL[scaling.metric].format(sel=selector),
                "threshold": f"{scaling.target:g}",
            }}],
        },
    }
