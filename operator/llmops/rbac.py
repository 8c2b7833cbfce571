"""The operator's least-privilege RBAC rules, and Kopf's peering CRDs.

One source for the Helm chart (crdgen writes charts/llmops/files/) and for the
test that runs the operator under exactly these rules.
"""

from __future__ import annotations

from typing import Any

OUR_KINDS = ["finetunejobs", "compressionjobs", "inferenceservices"]

# Rules on namespaced resources: bound cluster-wide, or per watched namespace (values.watchNamespaces).
NAMESPACED_RULES: list[dict[str, Any]] = [
    # Our resources: watched; read again after a conflict on a status write; patched by Kopf only
    # to take off a leftover finalizer. Status is written (merge patch), never read on its own.
    {"apiGroups": ["llmops.dev"], "resources": OUR_KINDS, "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["llmops.dev"], "resources": [f"{k}/status" for k in OUR_KINDS], "verbs": ["patch"]},
    # A job's children: created (and read when a create finds the name taken), patched (suspend,
    # deadline), deleted when a deleted namesake left them behind. No update (PUT) anywhere.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # InferenceService: its ConfigMap, Deployment and HPA are server-side applied (patch; create the
    # first time), never read one by one; its ReplicaSets only watched, to find its pods; KEDA's
    # ScaledObject where KEDA is installed (applied, never listed).
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["create", "patch", "delete"]},
    # Events: ours to post (core/v1, each once), and the Job controller's FailedCreate to read
    # (quota, admission, missing PriorityClass).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    # Kopf: peering between replicas that watch listed namespaces.
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]

# Rules on cluster-scoped resources: always bound cluster-wide.
CLUSTER_SCOPED_RULES: list[dict[str, Any]] = [
    # GPU memory per product, from GPU feature discovery labels.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    # Kopf: namespace and CRD discovery, peering between replicas that watch every namespace.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]

# Everything, for the default install that watches all namespaces.
CLUSTER_RULES: list[dict[str, Any]] = NAMESPACED_RULES + CLUSTER_SCOPED_RULES


def _peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Kopf operator replicas: the highest priority one acts, the others stand by.",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


PEERING_CRDS = [
    _peering_crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    _peering_crd("KopfPeering", "kopfpeerings", "Namespaced"),
]
