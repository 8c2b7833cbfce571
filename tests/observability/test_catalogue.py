"""The metrics catalogue is exactly what the code declares, and every label on it is bounded."""

from __future__ import annotations

import pytest
from prometheus_client.metrics import MetricWrapperBase

from llmops.observability import catalogue
from llmops.runtime import metrics as operator_metrics
from tests.serve.serve_support import in_serve_venv

# The serving app's exposition after one request, read in the serving runner's own venv (its
# transformers 4 stack): every family with the label names its samples carry.
SERVING_EXPOSITION = r"""
import asyncio, json
from prometheus_client.parser import text_string_to_metric_families
from llmops_runners.serve.app import create_app
from llmops_runners.serve.config import ServeConfig

app = create_app(ServeConfig.model_validate({"model": {"path": "/nonexistent"}, "servedModelName": "m"}), lambda *a: None)

async def get(path):  # one plain ASGI request (no lifespan: the model never loads, /v1/models answers 503)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": [], "scheme": "http", "root_path": "",
             "server": ("test", 80), "client": ("test", 1)}
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()

asyncio.run(get("/v1/models"))
families = {}
for family in text_string_to_metric_families(asyncio.run(get("/metrics"))):
    labels = {label for sample in family.samples for label in sample.labels if label not in ("le", "quantile")}
    families[family.name + ("_total" if family.type == "counter" else "")] = [family.type, sorted(labels)]
print(json.dumps(families))
"""


def declared(collectors) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name as exposed → (type, label names) of prometheus_client metric objects."""
    out = {}
    for metric in collectors:
        if isinstance(metric, MetricWrapperBase):
            out[metric._name + ("_total" if metric._type == "counter" else "")] = (metric._type, tuple(metric._labelnames))
    return out


def catalogued(source: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {s.name: (s.type, s.labels) for s in catalogue.OURS if s.source == source}


def test_the_operator_declares_what_the_catalogue_lists():
    assert declared(vars(operator_metrics).values()) == catalogued(catalogue.OPERATOR)


def test_the_training_runner_declares_what_the_catalogue_lists():
    from llmops_runners.metrics import TrainingGauges

    assert declared(TrainingGauges("j").registry._collector_to_names) == catalogued(catalogue.TRAINING)


def test_the_compression_runner_declares_what_the_catalogue_lists():
    from llmops_runners.compress.gauges import CompressionGauges

    assert declared(CompressionGauges("j", 2).registry._collector_to_names) == catalogued(catalogue.COMPRESSION)


def test_the_serving_runner_exposes_what_the_catalogue_lists():
    exposed = {name: (type_, tuple(labels)) for name, (type_, labels) in in_serve_venv(SERVING_EXPOSITION).items()}
    wanted = {name: (type_, tuple(sorted(labels))) for name, (type_, labels) in catalogued(catalogue.SERVING).items()}
    assert exposed == wanted


def test_every_label_is_documented_as_bounded():
    used = {label for series in catalogue.OURS for label in series.labels}
    assert used == set(catalogue.LABELS), "add the label to catalogue.LABELS with why it is bounded (or drop the stale entry)"


@pytest.mark.parametrize("source", [catalogue.TRAINING, catalogue.COMPRESSION])
def test_runner_series_name_their_job(source):
    # The runner's own label names its FineTuneJob or CompressionJob even without the PodMonitor's relabeling.
    assert all("job_name" in s.labels for s in catalogue.OURS if s.source == source)


def test_per_object_series_join_to_their_resource():
    per_object = [s for s in catalogue.OURS if s.source == catalogue.OPERATOR and "name" in s.labels]
    assert {s.name for s in per_object} == {"llmops_object_phase", "llmops_object_failed", "llmops_status_figure"}
    assert all({"namespace", "kind", "name"} <= set(s.labels) for s in per_object)
