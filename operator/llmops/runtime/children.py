"""Pieces every child resource shares: names, labels, owner references, scheduling, storage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..settings import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_KIND,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
)

MAX_NAME = 63  # Job names become pod labels (job-name), so they stay DNS labels.


class InvalidLocation(ValueError):
    """A URI the operator cannot hand to a runner."""


def child_name(parent: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """A stable child name: parent + suffix, shortened with a hash when too long."""
    name = f"{parent}-{suffix}" if suffix else parent
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(digest) - 1 - (len(suffix) + 1 if suffix else 0)
    return f"{parent[:keep].rstrip('-')}-{digest}" + (f"-{suffix}" if suffix else "")


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


def gpu_scheduling(gpu_type: str | None, scheduling: dict[str, Any] | None) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority of a GPU pod spec."""
    scheduling = scheduling or {}
    node_selector = dict(scheduling.get("nodeSelector") or {})
    if gpu_type:
        node_selector[GPU_PRODUCT_LABEL] = gpu_type
    tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    tolerations += [t for t in scheduling.get("tolerations") or [] if t not in tolerations]
    out: dict[str, Any] = {"tolerations": tolerations}
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
