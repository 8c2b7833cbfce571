"""A real Prometheus scrapes the operator and evaluates the generated alert rules on its series."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from finetune_helpers import create, finetunejob, succeed_with, wait_phase
from waiting import wait_for

from tests.helpers.prometheus import Prometheus

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prometheus(tmp_path, operator):
    scrape = [{"job_name": "llmops-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]}]
    with Prometheus(tmp_path / "prometheus", scrape, rule_files=[REPO / "dashboards" / "alerts.yaml"]) as prom:
        yield prom


def test_prometheus_scrapes_the_operator_and_evaluates_the_alerts(prometheus, custom, namespace, operator):
    create(custom, namespace, finetunejob("prom", sim=succeed_with({"status": "Succeeded", "metrics": {"evalLoss": 1.25}}, "1s")))
    wait_phase(custom, namespace, "prom", "Succeeded")

    def value(expr: str) -> float | None:
        result = prometheus.query(expr)
        return float(result[0]["value"][1]) if result else None

    wait_for(lambda: (value('sum(llmops_reconcile_total{kind="FineTuneJob",result="success"})') or 0) > 0, timeout=30,
             what="reconciles scraped by Prometheus")
    # The per-object series name the object; the final figures outlive its pods.
    wait_for(lambda: value(f'llmops_object_phase{{namespace="{namespace}",kind="FineTuneJob",name="prom",phase="Succeeded"}}') == 1,
             what="the object's phase scraped")
    assert value(f'llmops_status_figure{{namespace="{namespace}",name="prom",figure="evalLoss"}}') == 1.25
    assert value('llmops_reconcile_total{kind="InferenceService",result="error"}') == 0  # counted from zero: rates read 0, not "no data"

    wait_for(lambda: all(r.get("health") == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]),
             what="every rule evaluated without error")
    rules = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert {"LlmopsReconcileErrors", "LlmopsOperatorAbsent", "LlmopsJobFailed", "LlmopsTimeToFirstTokenHigh"} <= set(rules)
    time.sleep(2)
    # The operator is up and nothing failed: no alert is pending or firing.
    active = [r["name"] for g in prometheus.api("rules")["groups"] for r in g["rules"] if r["state"] != "inactive"]
    assert not active, json.dumps(active)
