"""The Helm chart lints and renders what it promises; two replicas peer. (Installing it: test_chart_install.py;
its RBAC: test_least_privilege.py.)"""

from __future__ import annotations

import signal

import pytest
import yaml

from chart_helpers import CHART, helm, render
from conftest import OperatorProcess
from finetune_helpers import create, finetunejob, succeed_with, wait_phase
from llmops.observability import dashboards
from llmops.rbac import CLUSTER_RULES
from waiting import wait_for

pytestmark = pytest.mark.cluster


def test_chart_lints_and_renders_what_it_promises():
    lint = helm("lint", "--strict", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
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
