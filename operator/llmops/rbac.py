"""The operator's least-privilege RBAC rules, and Kopf's peering CRDs.

One source for the Helm chart (crdgen writes charts/llmops/files/) and for the
test that runs the operator under exactly these rules.
"""

from __future__ import annotations

from typing import Any

OUR_KINDS = ["finetunejobs", "compressionjobs", "inferenceservices"]

CLUSTER_RULES: list[dict[str, Any]] = [
    # Our resources: Kopf watches them and patches its annotations; we write status.
    {"apiGroups": ["llmops.dev"], "resources": OUR_KINDS, "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["llmops.dev"], "resources": [f"{k}/status" for k in OUR_KINDS], "verbs": ["get", "patch"]},
    # Children: watched, created, server-side applied or merge-patched (both are "patch"), and
    # deleted when a deleted namesake left them behind. No update (PUT) anywhere.
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # InferenceService: the server's Deployment (its ReplicaSets only read, to find its pods),
    # an HPA, or KEDA's ScaledObject where KEDA is installed (applied, never listed).
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["get", "create", "patch", "delete"]},
    # Events: ours to post, and the Job controller's FailedCreate to read (quota, admission, missing PriorityClass).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "list"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # GPU memory per product, from GPU feature discovery labels.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    # Kopf: namespace and CRD discovery, peering between replicas.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]


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
