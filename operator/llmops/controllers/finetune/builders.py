"""FineTuneJob → its runner's Job (and a headless Service for several nodes).

Pure functions of the parent object: the plan and the tests call them alike.
The runner config follows docs/runner-contract.md; it never holds a secret
(tokens reach the pod through env.valueFrom only).
"""

from __future__ import annotations

from typing import Any

from ...api import FINETUNE
from ...api.finetune import FineTuneJobSpec
from ...settings import LABEL_NAME, LABEL_ROLE, Settings
from ...runtime.children import (
    TERMINATION_LOG,
    RunnerPod,
    child_name,
    labels,
    metadata,
    resolve_location,
    runner_job,
    user_pod_options,
)
from .preflight import cpu_only, precision

TAG = FINETUNE.short_names[0]  # ftj: part of every child name, so kinds never collide
CONTAINER = "trainer"
TOKEN_ENV = "HF_TOKEN"
CHECKPOINT_SUBDIR = "checkpoints"


def service_name(name: str) -> str:
    return child_name(name, TAG, "workers")


def job_name(name: str, attempt: int) -> str:
    """Every group restart gets a fresh Job, so pods of a failed group never linger."""
    return child_name(name, TAG, f"r{attempt}" if attempt else "")


def runner_config(body: dict[str, Any], spec: FineTuneJobSpec, method: str, settings: Settings) -> dict[str, Any]:
    """The JSON the runner reads (URIs resolved to paths inside the pod)."""
    wire = spec.to_wire()
    model = resolve_location(spec.base_model.uri, settings.pvc_mount_root)
    data = resolve_location(spec.dataset.uri, settings.pvc_mount_root)
    output = resolve_location(spec.output.uri, settings.pvc_mount_root)
    validation = spec.dataset.validation_uri and resolve_location(spec.dataset.validation_uri, settings.pvc_mount_root)
    config: dict[str, Any] = {
        "jobName": body["metadata"]["name"],
        "namespace": body["metadata"]["namespace"],
        "model": {
            "path": model.path,
            "revision": spec.base_model.revision,
            "tokenEnv": TOKEN_ENV if spec.base_model.token_secret_ref else None,
        },
        "dataset": {
            "path": data.path,
            "format": spec.dataset.format,
            "validationSplit": spec.dataset.validation_split,
            "validationPath": validation.path if validation else None,
        },
        "method": method,
        # Resolved here, so the runner does what the pre-flight estimated: bf16 on GPUs, fp32 on CPU.
        "training": {**wire["training"], "precision": precision(spec)},
        "checkpointing": wire["checkpointing"],
        "output": {"path": output.path, "mergeLora": spec.output.merge_lora},
        "metrics": {"port": settings.runner_metrics_port},
        "terminationMessagePath": TERMINATION_LOG,
    }
    # Method blocks: what the user wrote, or defaults for the method auto picked.
    if method in ("lora", "qlora"):
        config["lora"] = wire.get("lora") or {}
    if method == "qlora":
        config["qlora"] = wire.get("qlora") or {}
    if method == "freeze":
        config["freeze"] = wire.get("freeze") or {}
    if method == "prompt-tuning":
        config["promptTuning"] = wire.get("promptTuning") or {}
    if spec.deepspeed:
        config["deepspeed"] = wire["deepspeed"]
    return config


def headless_service(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Gives every worker pod a stable DNS name (<job>-<index>.<service>) for the rendezvous."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(body, service_name(name)),
        "spec": {
            "clusterIP": "None",
            # Workers must resolve each other before they are Ready (the rendezvous comes first).
            "publishNotReadyAddresses": True,
            "selector": {LABEL_NAME: labels(body["kind"], name)[LABEL_NAME], LABEL_ROLE: "worker"},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """One training process per GPU; a CPU job (gpusPerNode 0) runs one per node."""
    return spec.resources.gpus_per_node or 1


def _env(body: dict[str, Any], spec: FineTuneJobSpec, settings: Settings, job: str) -> list[dict[str, Any]]:
    res = spec.resources
    namespace = body["metadata"]["namespace"]
    nproc = processes_per_node(spec)
    env: list[dict[str, Any]] = [
        # Where a retried group resumes from: the newest checkpoint the last attempt left.
        {"name": "LLMOPS_CHECKPOINT_DIR", "value": f"{resolve_location(spec.output.uri, settings.pvc_mount_root).path}/{CHECKPOINT_SUBDIR}"},
        {"name": "NNODES", "value": str(res.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(nproc)},
        {"name": "WORLD_SIZE", "value": str(res.nodes * nproc)},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
    ]
    if cpu_only(spec):
        env += [
            # DeepSpeed picks its CPU accelerator itself when no GPU is visible; say so rather than rely on detection.
            {"name": "DS_ACCELERATOR", "value": "cpu"},
            # torch sizes its thread pool from the node's cores, not the pod's CPU limit; with a limit below
            # the node's cores the surplus threads are throttled. limits.cpu rounds up to whole cores
            # (and is the node's allocatable CPU when resources.cpu is unset).
            {"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {"containerName": CONTAINER, "resource": "limits.cpu", "divisor": "1"}}},
        ]
    if res.nodes > 1:
        env += [
            {"name": "MASTER_ADDR", "value": f"{job}-0.{service_name(body['metadata']['name'])}.{namespace}.svc"},
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']"}},
            },
        ]
    else:
        env += [{"name": "MASTER_ADDR", "value": "127.0.0.1"}, {"name": "NODE_RANK", "value": "0"}]
    ref = spec.base_model.token_secret_ref
    if ref:
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def job(body: dict[str, Any], spec: FineTuneJobSpec, config: dict[str, Any], settings: Settings, attempt: int,
        deadline_seconds: int | None = None) -> dict[str, Any]:
    """The batch/v1 Job of one attempt: one pod per node, all GPUs of the node in it (none on CPU)."""
    name = body["metadata"]["name"]
    res = spec.resources
    this_job = job_name(name, attempt)
    locations = [resolve_location(u, settings.pvc_mount_root) for u in (spec.base_model.uri, spec.dataset.uri, spec.output.uri)]
    pod = RunnerPod(
        container=CONTAINER,
        image=(spec.image.image if spec.image and spec.image.image else None) or settings.finetune_image,
        module="llmops_runners.finetune",
        config=config,
        env=_env(body, spec, settings, this_job),
        gpus=res.gpus_per_node,
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
        body, this_job, pod, attempt, settings.pvc_mount_root,
        completions=res.nodes,
        subdomain=service_name(name) if res.nodes > 1 else None,
        suspend=spec.suspend,
        queue=spec.scheduling.queue_name if spec.scheduling else None,
        deadline_seconds=deadline_seconds,
    )
