"""FineTuneJob → ConfigMap (runner config), batch/v1 Job, and a headless Service for multi-node.

Pure functions of the parent object: the reconciler and the tests call them alike.
The runner config follows docs/runner-contract.md; it never holds a secret (tokens
reach the pod through env.valueFrom only).
"""

from __future__ import annotations

import json
from typing import Any

from ..api.finetune import FineTuneJobSpec
from ..settings import KUEUE_QUEUE_LABEL, LABEL_ATTEMPT, LABEL_NAME, LABEL_ROLE, Settings
from .common import (
    child_name,
    claim_volumes,
    container_resources,
    gpu_scheduling,
    labels,
    metadata,
    resolve_location,
)

CONTAINER = "trainer"
CONFIG_MOUNT = "/etc/llmops"
CONFIG_FILE = "config.json"
TERMINATION_LOG = "/dev/termination-log"
TOKEN_ENV = "HF_TOKEN"
CHECKPOINT_SUBDIR = "checkpoints"


def config_map_name(name: str) -> str:
    return child_name(name, "config")


def service_name(name: str) -> str:
    return child_name(name, "workers")


def job_name(name: str, attempt: int) -> str:
    """Attempt 0 is the plain name; every group restart gets a fresh Job (pods of a failed group never linger)."""
    return child_name(name) if attempt == 0 else child_name(name, f"r{attempt}")


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
        "training": wire["training"],
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


def config_map(body: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(body, config_map_name(body["metadata"]["name"])),
        "data": {CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True)},
    }


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


def _env(body: dict[str, Any], spec: FineTuneJobSpec, settings: Settings, job: str, attempt: int) -> list[dict[str, Any]]:
    res = spec.resources
    namespace = body["metadata"]["namespace"]
    env: list[dict[str, Any]] = [
        {"name": "LLMOPS_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
        {"name": "LLMOPS_ATTEMPT", "value": str(attempt)},
        # Where a retried group resumes from: the newest checkpoint the last attempt left.
        {"name": "LLMOPS_CHECKPOINT_DIR", "value": f"{resolve_location(spec.output.uri, settings.pvc_mount_root).path}/{CHECKPOINT_SUBDIR}"},
        {"name": "NNODES", "value": str(res.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(res.gpus_per_node)},
        {"name": "WORLD_SIZE", "value": str(res.nodes * res.gpus_per_node)},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
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


def job(
    body: dict[str, Any],
    spec: FineTuneJobSpec,
    settings: Settings,
    attempt: int,
    deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job of one attempt: one pod per node, all GPUs of the node in it."""
    name = body["metadata"]["name"]
    res = spec.resources
    scheduling = spec.scheduling.to_wire() if spec.scheduling else None
    locations = [resolve_location(u, settings.pvc_mount_root) for u in (spec.base_model.uri, spec.dataset.uri, spec.output.uri)]
    output_claim = locations[-1].claim
    volumes, mounts = claim_volumes(locations, {output_claim} if output_claim else set(), settings.pvc_mount_root)
    volumes += [
        {"name": "config", "configMap": {"name": config_map_name(name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": str(res.shared_memory)} if res.shared_memory else {})}},
    ]
    mounts += [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, {"name": "dshm", "mountPath": "/dev/shm"}]
    this_job = job_name(name, attempt)
    image = (spec.image.image if spec.image and spec.image.image else None) or settings.finetune_image
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-m", "llmops_runners.finetune"],
        "args": ["--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"],
        "env": _env(body, spec, settings, this_job, attempt),
        "ports": [{"name": "metrics", "containerPort": settings.runner_metrics_port}],
        "resources": container_resources(res.gpus_per_node, res.cpu, res.memory),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image and spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    pod_meta = spec.pod_metadata
    pod_labels = {**(pod_meta.labels if pod_meta and pod_meta.labels else {}), **metadata(body, this_job)["labels"], LABEL_ROLE: "worker", LABEL_ATTEMPT: str(attempt)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        **gpu_scheduling(res.gpu_type, scheduling),
    }
    job_labels = {LABEL_ATTEMPT: str(attempt)}
    queue = spec.scheduling.queue_name if spec.scheduling else None
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    job_spec: dict[str, Any] = {
        # A failed pod fails the whole group: the operator restarts the group (a lone
        # restarted rank would hang the rendezvous) and counts restarts itself.
        "backoffLimit": 0,
        "completions": res.nodes,
        "parallelism": res.nodes,
        # Kueue admits a queued Job by unsuspending it; otherwise spec.suspend decides.
        "suspend": bool(spec.suspend or queue),
        "podFailurePolicy": {
            "rules": [
                # Node loss, eviction, preemption: fail fast so the operator retries at once, uncounted.
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels, "annotations": dict(pod_meta.annotations) if pod_meta and pod_meta.annotations else {}}, "spec": pod_spec},
    }
    if res.nodes > 1:
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = service_name(name)
    if deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, int(deadline_seconds))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(body, this_job, job_labels),
        "spec": job_spec,
    }
