"""A real Prometheus scrapes the operator; the alert rules load and every dashboard query runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from finetune_helpers import create, finetunejob, succeed_with, wait_phase
from llmops.devcluster.cluster import free_port
from waiting import wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def prometheus(tmp_path, operator):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/setup.sh installs Debian's package)")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "dashboards" / "alerts.yaml")],
        "scrape_configs": [{"job_name": "llmops-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), timeout=30, what="Prometheus ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_prometheus_scrapes_the_operator_and_evaluates_our_queries(prometheus, custom, namespace, operator):
    create(custom, namespace, finetunejob("prom", sim=succeed_with({"status": "Succeeded"}, "1s")))
    wait_phase(custom, namespace, "prom", "Succeeded")

    def reconciles() -> float:
        result = _query(prometheus, 'sum(llmops_reconcile_total{kind="FineTuneJob",result="success"})')["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    wait_for(lambda: reconciles() > 0, timeout=30, what="reconciles scraped by Prometheus")
    wait_for(lambda: _query(prometheus, 'llmops_objects{kind="FineTuneJob",phase="Succeeded"} == 1')["data"]["result"],
             what="phase gauge scraped")

    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert {"LlmopsReconcileErrors", "LlmopsOperatorAbsent", "LlmopsTrainingStalled"} <= set(rules)
    wait_for(lambda: all(r.get("health") == "ok" for g in _rules(prometheus) for r in g["rules"]), what="rules evaluated without error")
    # The operator is up and reporting: the absent() alert must not fire.
    time.sleep(2)
    assert next(r for g in _rules(prometheus) for r in g["rules"] if r["name"] == "LlmopsOperatorAbsent")["state"] == "inactive"

    # Every dashboard query parses and runs (series of training pods are absent here: empty is fine).
    board = json.loads((REPO / "dashboards" / "llmops.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$namespace", ".*")
            answer = _query(prometheus, expr)
            assert answer["status"] == "success", (panel["title"], expr, answer)


def _rules(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as resp:
        return json.loads(resp.read())["data"]["groups"]
