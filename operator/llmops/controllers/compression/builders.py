"""CompressionJob → its runner's Job: pure functions of the parent object and its resolved input.

The runner config follows docs/runner-contract.md (compression): every URI resolved to a path
inside the pod, every claim it names mounted (the output's read-write, the others read-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...api import COMPRESSION
from ...api.compression import LLM_COMPRESSOR_METHODS, ONNX_METHODS, CompressionJobSpec
from ...runtime.children import TERMINATION_LOG, Location, RunnerPod, child_name, resolve_location, runner_job, user_pod_options
from ...settings import Settings

TAG = COMPRESSION.short_names[0]  # cpj: part of every child name, so kinds never collide
CONTAINER = "compressor"
TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class ResolvedInput:
    """The model to compress as URIs: spec.model.uri, or what a FineTuneJob produced."""

    uri: str
    base_uri: str | None = None  # an adapter's base model


def job_name(name: str, attempt: int) -> str:
    return child_name(name, TAG, f"r{attempt}" if attempt else "")


def quantize_methods(spec: CompressionJobSpec) -> list[str]:
    return [s.quantize.method for s in spec.stages if s.quantize]


def image(spec: CompressionJobSpec, settings: Settings) -> str:
    """ONNX Runtime INT8 and llm-compressor cannot share an environment (transformers pins): each has its image."""
    if spec.image and spec.image.image:
        return spec.image.image
    return settings.compress_onnx_image if any(m in ONNX_METHODS for m in quantize_methods(spec)) else settings.compress_image


def gpus(spec: CompressionJobSpec) -> int:
    """spec.resources.gpus, or 1 when llm-compressor calibrates (it runs the model), else CPU."""
    if spec.resources.gpus is not None:
        return spec.resources.gpus
    return 1 if any(m in LLM_COMPRESSOR_METHODS for m in quantize_methods(spec)) else 0


class _Paths:
    """Resolves URIs to in-pod paths and remembers every location, so the pod mounts their claims."""

    def __init__(self, mount_root: str):
        self.mount_root = mount_root
        self.locations: list[Location] = []

    def __call__(self, uri: str | None) -> str | None:
        if uri is None:
            return None
        location = resolve_location(uri, self.mount_root)
        self.locations.append(location)
        return location.path


def runner_config(body: dict[str, Any], spec: CompressionJobSpec, source: ResolvedInput, settings: Settings) -> tuple[dict[str, Any], list[Location]]:
    """The runner's JSON config and the locations it reads and writes (the output's last)."""
    path = _Paths(settings.pvc_mount_root)
    config: dict[str, Any] = {
        "jobName": body["metadata"]["name"],
        "namespace": body["metadata"]["namespace"],
        "model": {
            "path": path(source.uri),
            "basePath": path(source.base_uri),
            "revision": spec.model.revision,
            "tokenEnv": TOKEN_ENV if spec.model.token_secret_ref else None,
        },
        "stages": [_stage(stage, name, path) for stage, name in zip(spec.stages, stage_names(spec))],
        "metrics": {"port": settings.runner_metrics_port},
        "terminationMessagePath": TERMINATION_LOG,
    }
    if spec.evaluation:
        ev = spec.evaluation
        config["evaluation"] = {"path": path(ev.dataset_uri), "metric": ev.metric, "maxAccuracyDrop": ev.max_accuracy_drop, "samples": ev.samples}
    config["output"] = {"path": path(spec.output.uri)}
    return config, path.locations


def stage_names(spec: CompressionJobSpec) -> list[str]:
    """Each stage's name in status and in the runner's report: given, or `<type>-<index>`."""
    return [stage.name or f"{_type(stage)}-{i}" for i, stage in enumerate(spec.stages)]


def _type(stage) -> str:
    return "merge-lora" if stage.merge_lora else "prune" if stage.prune else "distill" if stage.distill else "quantize"


def _stage(stage, name: str, path: _Paths) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if stage.merge_lora:
        out["mergeLora"] = {"adapterPath": path(stage.merge_lora.adapter_uri)}
    elif stage.prune:
        p = stage.prune
        out["prune"] = {"method": p.method, "sparsity": p.sparsity, "iterations": p.iterations}
        if p.recovery:
            out["prune"]["recovery"] = {"datasetPath": path(p.recovery.dataset_uri), "steps": p.recovery.steps, "learningRate": p.recovery.learning_rate}
    elif stage.distill:
        d = stage.distill
        out["distill"] = {
            "studentPath": path(d.student_model),
            "studentConfig": d.student_config,
            "studentFromTeacher": d.student_from_teacher.to_wire() if d.student_from_teacher else None,
            "temperature": d.temperature, "alpha": d.alpha, "datasetPath": path(d.dataset_uri),
            "maxSteps": d.max_steps, "learningRate": d.learning_rate, "batchSize": d.batch_size,
        }
    else:
        q = stage.quantize
        out["quantize"] = {"method": q.method, "ignore": q.ignore,
                           "calibration": {"path": path(q.calibration.dataset_uri), "samples": q.calibration.samples} if q.calibration else None}
    return out


def job(body: dict[str, Any], spec: CompressionJobSpec, config: dict[str, Any], locations: list[Location], settings: Settings,
        attempt: int, deadline_seconds: int | None = None) -> dict[str, Any]:
    """The batch/v1 Job of one attempt: one pod running the whole chain."""
    res = spec.resources
    pod_gpus = gpus(spec)
    env: list[dict[str, Any]] = []
    if not pod_gpus:
        # torch sizes its thread pool from the node's cores, not the pod's CPU limit.
        env.append({"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {"containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}}})
    if spec.model.token_secret_ref:
        ref = spec.model.token_secret_ref
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    pod = RunnerPod(
        container=CONTAINER,
        image=image(spec, settings),
        module="llmops_runners.compress",
        config=config,
        env=env,
        gpus=pod_gpus,
        gpu_type=res.gpu_type,
        cpu=res.cpu,
        memory=res.memory,
        shared_memory=res.shared_memory,
        locations=locations,
        writable_claim=locations[-1].claim,
        ports=(("metrics", settings.runner_metrics_port),),
        **user_pod_options(spec),
    )
    return runner_job(
        body, job_name(body["metadata"]["name"], attempt), pod, attempt, settings.pvc_mount_root,
        suspend=spec.suspend,
        queue=spec.scheduling.queue_name if spec.scheduling else None,
        deadline_seconds=deadline_seconds,
    )
