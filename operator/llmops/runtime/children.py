"""Pieces every child resource shares (names, labels, owner references, scheduling,
storage) and the one skeleton of a runner's Job that every Job-running kind uses."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..settings import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_KIND,
    LABEL_MANAGED_BY,
    LABEL_ATTEMPT,
    LABEL_NAME,
    LABEL_ROLE,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    PREFIX,
)

MAX_NAME = 63  # Job names become pod labels (job-name), so they stay DNS labels.
RUNNER_CONFIG_ANNOTATION = f"{PREFIX}/runner-config"
CONFIG_MOUNT = "/etc/llmops"
CONFIG_FILE = "config.json"
TERMINATION_LOG = "/dev/termination-log"

# Every runner pod runs as this non-root user (the runner images' `runner`, uid 1000) on a
# read-only root filesystem. SCRATCH is its one writable place besides the mounted claims:
# the images keep HF_HOME, TORCH_EXTENSIONS_DIR and TRITON_CACHE_DIR under it, and HOME
# points there too, for libraries that write under ~ (~/.cache, ~/.triton, ~/.nv).
RUNNER_UID = 1000
SCRATCH = "/tmp"
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUNNER_UID,
    "runAsGroup": RUNNER_UID,
    "fsGroup": RUNNER_UID,  # the output claim is writable by the runner
    "fsGroupChangePolicy": "OnRootMismatch",  # no recursive chown of a claim full of weights on every start
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


class InvalidLocation(ValueError):
    """A URI the operator cannot hand to a runner."""


def child_name(parent: str, tag: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """parent-tag[-suffix], shortened with a hash when too long.

    The kind's tag keeps a FineTuneJob and a CompressionJob of the same name
    apart; with it last before the suffix, no parent name and suffix of one
    kind can spell another parent's child (a suffix never ends in the tag).
    """
    tail = f"-{tag}" + (f"-{suffix}" if suffix else "")
    name = parent + tail
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(digest) - 1 - len(tail)
    return f"{parent[:keep].rstrip('-')}-{digest}{tail}"


def labels(kind: str, name: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_KIND: kind.lower(), LABEL_NAME: name[:63].rstrip("-.")}


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """Children go with their parent through the garbage collector: no finalizer needed."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(body: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    parent = body["metadata"]
    return {
        "name": name,
        "namespace": parent["namespace"],
        "labels": {**labels(body["kind"], parent["name"]), **(extra_labels or {})},
        "ownerReferences": [owner_reference(body)],
    }


def pod_scheduling(gpu_type: str | None, scheduling: dict[str, Any] | None, gpus: int = 1) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority of a pod spec.

    A GPU pod tolerates the nvidia.com/gpu taint and is pinned to its GPU product; a CPU pod
    (gpus 0) gets neither, so it never lands on (nor holds) a GPU node unless the user's own
    scheduling says so.
    """
    scheduling = scheduling or {}
    node_selector = dict(scheduling.get("nodeSelector") or {})
    if gpu_type and gpus:
        node_selector[GPU_PRODUCT_LABEL] = gpu_type
    tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []
    tolerations += [t for t in scheduling.get("tolerations") or [] if t not in tolerations]
    out: dict[str, Any] = {"tolerations": tolerations} if tolerations else {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if scheduling.get("affinity"):
        out["affinity"] = scheduling["affinity"]
    if scheduling.get("priorityClassName"):
        out["priorityClassName"] = scheduling["priorityClassName"]
    return out


def container_resources(gpus: int, cpu: Any = None, memory: Any = None) -> dict[str, Any]:
    """Requests = limits: GPUs cannot be overcommitted and a training pod should be Guaranteed."""
    amounts: dict[str, str] = {}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    if cpu is not None:
        amounts["cpu"] = str(cpu)
    if memory is not None:
        amounts["memory"] = str(memory)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


@dataclass(frozen=True)
class Location:
    """Where a runner finds a URI: a local path (maybe on a mounted claim) or a hub id."""

    path: str
    claim: str | None = None
    hub_id: bool = False


def resolve_location(uri: str, mount_root: str) -> Location:
    scheme, _, rest = uri.partition("://")
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise InvalidLocation(f"{uri} names no PersistentVolumeClaim; write pvc://<claim>/<path>")
        return Location(path=f"{mount_root}/{claim}/{sub}".rstrip("/"), claim=claim)
    if scheme == "file":
        return Location(path="/" + rest.lstrip("/"))
    if scheme == "hf":
        return Location(path=rest, hub_id=True)
    raise InvalidLocation(
        f"{uri}: {scheme}:// locations are not supported by the runners yet; copy the data to a PVC and use pvc://"
    )


def claim_volumes(locations: list[Location], writable: set[str], mount_root: str) -> tuple[list[dict], list[dict]]:
    """One volume and mount per distinct claim; claims in `writable` are mounted read-write."""
    claims = sorted({loc.claim for loc in locations if loc.claim})
    volumes, mounts = [], []
    for i, claim in enumerate(claims):
        volume = f"pvc-{i}"
        read_only = claim not in writable
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": f"{mount_root}/{claim}", "readOnly": read_only})
    return volumes, mounts


@dataclass(frozen=True)
class RunnerPod:
    """What a kind says about its runner's pod; `runner_job` makes the rest the same for every kind."""

    container: str  # container name, e.g. trainer
    image: str
    module: str  # python -m <module> --config <file>
    config: dict[str, Any]  # the runner's JSON config (never a secret)
    env: list[dict[str, Any]]
    gpus: int
    locations: list[Location]  # URIs the runner reads or writes; their claims are mounted
    writable_claim: str | None = None  # the output claim, the only one mounted read-write
    gpu_type: str | None = None
    cpu: Any = None
    memory: Any = None
    shared_memory: Any = None
    scheduling: dict[str, Any] | None = None
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    pull_policy: str | None = None
    ports: tuple[tuple[str, int], ...] = ()


def user_pod_options(spec: Any) -> dict[str, Any]:
    """The RunnerPod fields a user sets the same way in every Job-running kind's spec:
    `image.pullPolicy`, `scheduling` and `podMetadata`."""
    meta = spec.pod_metadata
    return {
        "pull_policy": spec.image.pull_policy if spec.image else None,
        "scheduling": spec.scheduling.to_wire() if spec.scheduling else None,
        "pod_labels": dict(meta.labels) if meta and meta.labels else {},
        "pod_annotations": dict(meta.annotations) if meta and meta.annotations else {},
    }


def runner_job(
    body: dict[str, Any],
    name: str,
    pod: RunnerPod,
    attempt: int,
    mount_root: str,
    *,
    completions: int = 1,
    subdomain: str | None = None,
    suspend: bool = False,
    queue: str | None = None,
    deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job of one attempt of a runner: one pod per completion.

    The runner's config reaches the pod as an annotation projected into a file
    (downward API), so an attempt is one object to create, not a ConfigMap and a Job.
    Every runner pod runs non-root on a read-only root filesystem (see POD_SECURITY_CONTEXT),
    with an emptyDir at /tmp as its scratch space; `pod.gpus` 0 makes a CPU pod.
    """
    volumes, mounts = claim_volumes(pod.locations, {pod.writable_claim} if pod.writable_claim else set(), mount_root)
    volumes += [
        {"name": "config", "downwardAPI": {"items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{RUNNER_CONFIG_ANNOTATION}']"}},
        ]}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": str(pod.shared_memory)} if pod.shared_memory else {})}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts += [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH},
    ]
    container: dict[str, Any] = {
        "name": pod.container,
        "image": pod.image,
        "command": ["python", "-m", pod.module],
        "args": ["--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"],
        "env": [
            {"name": "LLMOPS_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
            {"name": "LLMOPS_ATTEMPT", "value": str(attempt)},
            {"name": "HOME", "value": SCRATCH},  # the image's home is on the read-only root filesystem
            *pod.env,
        ],
        "resources": container_resources(pod.gpus, pod.cpu, pod.memory),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),  # a copy: callers may edit the Job
    }
    if pod.ports:
        container["ports"] = [{"name": port_name, "containerPort": port} for port_name, port in pod.ports]
    if pod.pull_policy:
        container["imagePullPolicy"] = pod.pull_policy
    pod_labels = {**pod.pod_labels, **labels(body["kind"], body["metadata"]["name"]), LABEL_ROLE: "worker", LABEL_ATTEMPT: str(attempt)}
    annotations = {**pod.pod_annotations, RUNNER_CONFIG_ANNOTATION: json.dumps(pod.config, sort_keys=True)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # runners never call the API: no credential in the pod
        "containers": [container],
        "volumes": volumes,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        **pod_scheduling(pod.gpu_type, pod.scheduling, pod.gpus),
    }
    job_labels = {LABEL_ATTEMPT: str(attempt)}
    if queue:
        job_labels[KUEUE_QUEUE_LABEL] = queue
    job_spec: dict[str, Any] = {
        # A failed pod fails the whole group: the operator restarts the group (a lone
        # restarted rank would hang a rendezvous) and counts restarts itself.
        "backoffLimit": 0,
        "completions": completions,
        "parallelism": completions,
        # Kueue admits a queued Job by unsuspending it; otherwise spec.suspend decides.
        "suspend": bool(suspend or queue),
        "podFailurePolicy": {
            "rules": [
                # Node loss, eviction, preemption: fail fast so the operator retries at once, uncounted.
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations}, "spec": pod_spec},
    }
    if completions > 1:
        job_spec["completionMode"] = "Indexed"
    if subdomain:
        pod_spec["subdomain"] = subdomain
    if deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, int(deadline_seconds))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(body, name, job_labels), "spec": job_spec}
