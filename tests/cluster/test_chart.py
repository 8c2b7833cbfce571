"""The Helm chart renders, applies, and its least-privilege RBAC is enough to run the operator."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from conftest import OperatorProcess
from finetune_helpers import create, events, finetunejob, succeed_with, wait_phase
from llmops.devcluster.build import bin_dir
from llmops.observability import dashboards
from llmops.rbac import CLUSTER_RULES
from waiting import wait_for

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "llmops"


def helm(*args: str) -> str:
    return subprocess.run([str(bin_dir() / "helm"), *args], capture_output=True, text=True, check=True).stdout


def render(*sets: str) -> list[dict]:
    args = [f"--set={s}" for s in sets]
    return [d for d in yaml.safe_load_all(helm("template", "llmops", str(CHART), "--namespace", "llmops-system", *args)) if d]


def test_chart_lints_and_renders_what_it_promises():
    helm("lint", "--strict", str(CHART))
    docs = render("metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "ConfigMap"} <= set(kinds)
    assert kinds["ClusterRole"]["rules"] == CLUSTER_RULES
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" in container["args"] and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    images = {kind: env[f"LLMOPS_{kind.upper()}_IMAGE"] for kind in ("finetune", "compress", "serve")}
    assert images == {kind: f"ghcr.io/llmops-dev/runner-{kind}:0.1.0" for kind in images}  # one runner image per kind
    assert env["LLMOPS_WORKERS"] == "32"
    # One ConfigMap per generated dashboard, labelled for Grafana's sidecar, holding exactly the generator's JSON.
    boards = {key: value for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
              for key, value in d["data"].items()}
    assert boards == dashboards.rendered()
    alerts = [r["alert"] for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    assert "LlmopsReconcileErrors" in alerts and "LlmopsTrainingStalled" in alerts
    # Two replicas: no --standalone, so they peer and one stands by.
    ha = {d["kind"]: d for d in render("replicas=2")}
    assert "--standalone" not in ha["Deployment"]["spec"]["template"]["spec"]["containers"][0].get("args", [])


def test_rendered_chart_is_accepted_by_the_api_server(cluster, namespace):
    docs = [d for d in render() if d["kind"] in ("Deployment", "ServiceAccount", "Service", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")]
    for doc in docs:
        if doc["metadata"].get("namespace"):
            doc["metadata"]["namespace"] = namespace
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout


def _kubeconfig_for(core, cluster, namespace: str, account: str, path: Path) -> Path:
    token = core.create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    ).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(admin))
    return path


def test_operator_works_under_the_charts_rbac_and_cannot_read_secrets(cluster, core, custom, namespace, tmp_path, api_client):
    rbac = client.RbacAuthorizationV1Api(api_client)
    account = "llmops-operator"
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account)))
    role_name = f"llmops-test-{namespace}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=role_name), rules=CLUSTER_RULES))
    rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
        metadata=client.V1ObjectMeta(name=role_name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role_name),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)],
    ))
    try:
        who = f"system:serviceaccount:{namespace}:{account}"
        assert cluster.kubectl("auth", "can-i", "get", "secrets", "-n", namespace, "--as", who, check=False).stdout.strip() == "no"
        assert cluster.kubectl("auth", "can-i", "update", "jobs.batch", "-n", namespace, "--as", who, check=False).stdout.strip() == "no"
        kubeconfig = _kubeconfig_for(core, cluster, namespace, account, tmp_path / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
        operator.start()
        try:
            create(custom, namespace, finetunejob("rbac", sim=succeed_with({"status": "Succeeded", "artifactUri": "file:///o"}, "1s")))
            done = wait_phase(custom, namespace, "rbac", "Succeeded")
            assert done["result"]["artifactUri"] == "file:///o"
            assert events(core, namespace, "rbac"), "events need RBAC too"
            assert "Forbidden" not in operator.log_tail(10**6), operator.log_tail()
        finally:
            operator.kill(signal.SIGTERM)
    finally:
        rbac.delete_cluster_role_binding(role_name)
        rbac.delete_cluster_role(role_name)


def test_peering_second_replica_stands_by_then_takes_over(cluster, custom, namespace, tmp_path):
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "llmops", "namespace": namespace}}))
    active = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "active.log")
    standby = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "standby.log")
    for proc, priority in ((active, "200"), (standby, "100")):
        proc.extra_env = {"LLMOPS_PEERING_PRIORITY": priority}
        proc.standalone = False
    active.start()
    standby.start()
    try:
        wait_for(lambda: "Pausing operations" in standby.log_tail(10**6), timeout=30, what="standby pauses")
        create(custom, namespace, finetunejob("first", sim=succeed_with({"status": "Succeeded"}, "1s")))
        wait_phase(custom, namespace, "first", "Succeeded")
        # The paused replica did nothing: no reconcile, no write (whatever Kopf's watch delivered meanwhile).
        assert 'llmops_reconcile_total{kind="FineTuneJob",result="success"}' in active.metrics()
        assert _counted(standby.metrics(), "llmops_reconcile_total") == 0 and "llmops_api_writes_total{" not in standby.metrics()
        active.kill(signal.SIGTERM)  # a graceful exit withdraws from the peering at once
        wait_for(lambda: "Resuming operations" in standby.log_tail(10**6), timeout=60, what="standby resumes")
        create(custom, namespace, finetunejob("second", sim=succeed_with({"status": "Succeeded"}, "1s")))
        wait_phase(custom, namespace, "second", "Succeeded")
    finally:
        active.kill(signal.SIGTERM)
        standby.kill(signal.SIGTERM)


def _counted(exposition: str, counter: str) -> float:
    """The sum of a counter's samples (counters start at zero for every kind, so presence says nothing)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(counter + "{"))
