"""The API resources the runtime reads and writes, and their REST paths."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import GROUP, VERSION, Kind


@dataclass(frozen=True)
class Resource:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


CONFIG_MAP = Resource("ConfigMap", "", "v1", "configmaps")
SERVICE = Resource("Service", "", "v1", "services")
POD = Resource("Pod", "", "v1", "pods")
JOB = Resource("Job", "batch", "v1", "jobs")
DEPLOYMENT = Resource("Deployment", "apps", "v1", "deployments")
REPLICA_SET = Resource("ReplicaSet", "apps", "v1", "replicasets")  # read only: a Deployment's pods hang off them
HPA = Resource("HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers")
SCALED_OBJECT = Resource("ScaledObject", "keda.sh", "v1alpha1", "scaledobjects")  # KEDA, when installed
EVENT = Resource("Event", "", "v1", "events")
NODE = Resource("Node", "", "v1", "nodes")

CHILD_RESOURCES = {r.kind: r for r in (CONFIG_MAP, SERVICE, POD, JOB, DEPLOYMENT, REPLICA_SET, HPA, SCALED_OBJECT)}


def of_kind(kind: Kind) -> Resource:
    return Resource(kind.kind, GROUP, VERSION, kind.plural)
