"""Installing the chart: bad values refused naming the field, the namespaced mode's RBAC, what
NOTES.txt tells a user, and every toggle accepted by the real API server."""

from __future__ import annotations

import pytest
import yaml
from chart_helpers import CHART, helm, render

from llmops.devcluster.thirdparty import monitoring_crds
from llmops.rbac import CLUSTER_RULES, CLUSTER_SCOPED_RULES, NAMESPACED_RULES

EVERY_TOGGLE = ("metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
                "grafana.dashboards.enabled=true", "replicas=2")


@pytest.mark.parametrize("value, field, words", [
    ("replicas=two", "/replicas", "want integer"),
    ("replica=2", "", "'replica' not allowed"),  # a typo is an error, not a silently ignored value
    ("image.pullPolicy=Sometimes", "/image/pullPolicy", "one of"),
    ("watchNamespaces={Team_A}", "/watchNamespaces/0", "does not match pattern"),
    ("metrics.prometheusRule.targets.errorRate=often", "/metrics/prometheusRule/targets/errorRate", "does not match pattern"),
    ("runnerImages.serve=", "/runnerImages/serve", "minLength: got 0, want 1"),
    ("prometheusUrl=prometheus:9090", "/prometheusUrl", "does not match pattern"),
])
def test_bad_values_are_refused_naming_the_field(value, field, words):
    done = helm("template", "llmops", str(CHART), f"--set={value}")
    assert done.returncode != 0
    assert f"at '{field}'" in done.stderr and words in done.stderr, done.stderr


def test_a_decimal_target_from_the_command_line_is_accepted_and_bounded():
    # helm --set passes 0.25 as a string: the schema takes it; --set-json passes a number, checked against the bound.
    assert helm("template", "llmops", str(CHART), "--set=metrics.prometheusRule.targets.ttftP95Seconds=0.25").returncode == 0
    done = helm("template", "llmops", str(CHART), "--set-json=metrics.prometheusRule.targets.gpuMemoryFraction=1.5")
    assert done.returncode != 0 and "gpuMemoryFraction': maximum" in done.stderr, done.stderr


def test_watching_listed_namespaces_binds_the_namespaced_rules_only_there():
    docs = render("watchNamespaces={team-a,team-b}", "replicas=2")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert roles["llmops-operator"]["rules"] == CLUSTER_SCOPED_RULES
    assert roles["llmops-operator-namespaced"]["rules"] == NAMESPACED_RULES
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(bindings) == {"team-a", "team-b"}
    assert all(b["roleRef"]["name"] == "llmops-operator-namespaced" for b in bindings.values())
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "KopfPeering"} == {"team-a", "team-b"}
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    # Nothing namespaced is granted cluster-wide in this mode.
    namespaced = {(g, r) for rule in NAMESPACED_RULES for g in rule["apiGroups"] for r in rule["resources"]}
    assert not namespaced & {(g, r) for rule in CLUSTER_SCOPED_RULES for g in rule["apiGroups"] for r in rule["resources"]}


def test_watching_every_namespace_binds_every_rule_cluster_wide():
    docs = render()
    assert [d["rules"] for d in docs if d["kind"] == "ClusterRole"] == [CLUSTER_RULES]
    assert not [d for d in docs if d["kind"] == "RoleBinding"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"] == ["llmops"]


@pytest.fixture
def prometheus_operator_crds(cluster):
    """The Prometheus Operator's CRDs, so its three kinds are validated like everything else."""
    for crd in monitoring_crds():
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))


@pytest.mark.cluster
def test_notes_say_what_to_apply_next(cluster, prometheus_operator_crds):
    done = helm("install", "llmops", str(CHART), "--dry-run=client", "--namespace", "llmops-system",
                "--set=watchNamespaces={team-a}", "--set=metrics.prometheusRule.enabled=true",
                env={"KUBECONFIG": str(cluster.kubeconfig)})
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "watching team-a" in notes and "rollout status deployment/llmops-operator" in notes
    assert notes.index("01-finetunejob") < notes.index("03-compressionjob") < notes.index("04-inferenceservice")
    assert "kubectl get ftj,cpj,lis" in notes and "PrometheusRule" in notes and "argocd-cm.yaml" in notes
    for example in ("01-finetunejob-lora.yaml", "03-compressionjob.yaml", "04-inferenceservice.yaml"):
        assert (CHART.parents[1] / "examples" / example).is_file(), example  # the files NOTES names exist


@pytest.mark.cluster
@pytest.mark.parametrize("sets", [(), EVERY_TOGGLE], ids=["defaults", "every-toggle"])
def test_the_rendered_chart_is_accepted_by_the_api_server(cluster, namespace, sets, prometheus_operator_crds):
    docs = render(*sets, f"watchNamespaces={{{namespace}}}", namespace=namespace) if sets else render(namespace=namespace)
    kinds = {d["kind"] for d in docs}
    if sets:
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "RoleBinding", "KopfPeering"} <= kinds
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.stdout.count("serverside-applied (server dry run)") == len(docs), out.stdout
