"""The operator runs in the cluster from its own image, installed by the chart, under the chart's RBAC.

No admin credentials: the pod talks to the API server through the `kubernetes` Service with its
ServiceAccount token, as on any real cluster. It watches its own namespace only (the chart's
namespaced mode: the rules on namespaced resources bound there by a RoleBinding, only the
cluster-scoped reads cluster-wide). It drives a (simulated-GPU) FineTuneJob to the end.
"""

from __future__ import annotations


import pytest
import yaml
from chart_helpers import render
from finetune_helpers import create, events, finetunejob, succeed_with, wait_phase
from waiting import wait_for


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")


def chart(namespace: str) -> list[dict]:
    # Watching one namespace: the namespaced rules are bound there only (a RoleBinding).
    return [d for d in render(f"watchNamespaces={{{namespace}}}", "progressInterval=1", "hfEndpoint=", namespace=namespace) if d["kind"] in (
        "Deployment", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding", "RoleBinding")]


@pytest.fixture
def in_cluster_operator(cluster, core, namespace, node_images):
    node_images("operator")
    docs = chart(namespace)
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
    cluster.apply(docs)
    yield
    cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all([d for d in docs if d["kind"] in CLUSTER_SCOPED]))


def test_the_operator_runs_in_cluster_from_its_image_under_the_charts_rbac(cluster, core, custom, namespace, in_cluster_operator):
    def ready_pod():
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=llmops-operator").items
        return next((p for p in pods if p.status.container_statuses and p.status.container_statuses[0].ready), None)

    pod = wait_for(ready_pod, timeout=120, interval=1, what="the operator pod to be Ready")
    assert pod.spec.node_name == "local-cpu"
    assert pod.spec.service_account_name == "llmops-operator"
    assert pod.spec.containers[0].image == "ghcr.io/llmops-dev/operator:0.1.0"
    assert pod.spec.containers[0].security_context.read_only_root_filesystem

    create(custom, namespace, finetunejob("in-cluster", sim=succeed_with({"status": "Succeeded", "artifactUri": "file:///o"}, "1s")))
    done = wait_phase(custom, namespace, "in-cluster", "Succeeded", timeout=90)
    assert done["result"]["artifactUri"] == "file:///o"
    wait_for(lambda: events(core, namespace, "in-cluster"), what="the operator's events")  # posted asynchronously
    log = cluster.kubectl("logs", "-n", namespace, pod.metadata.name).stdout
    assert "in-cluster" in log and "Forbidden" not in log and "Traceback" not in log, log[-3000:]
