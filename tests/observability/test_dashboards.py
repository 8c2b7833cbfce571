"""The generated dashboards: what they read, and that their vLLM and DCGM panels work on those
exporters' real text format (recorded samples, tests/fixtures/exporters/README.md says whence),
loaded into a real Prometheus. Our own series are checked on a real run in
tests/cluster/test_main_pipeline.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from llmops.observability import catalogue, dashboards
from tests.helpers.dashboards import panels, problems, render_all
from tests.helpers.prometheus import Prometheus
from tests.helpers.replay_exporter import ReplayExporter

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "exporters"
BOARDS = {name: json.loads(text) for name, text in dashboards.rendered().items()}
EXPORTED = set(catalogue.VLLM) | set(catalogue.DCGM)  # what vLLM and DCGM export (some of it our CPU engine too)


def test_every_panel_and_variable_reads_only_catalogued_series():
    readable = catalogue.readable_names()
    unknown = {}
    for name, board in BOARDS.items():
        for title, reads in panels(board).items():
            if reads - readable:
                unknown[f"{name} / {title}"] = reads - readable
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                metric = re.match(r"label_values\(([\w:]+)", var["query"]).group(1)
                if metric not in readable:
                    unknown[f"{name} / ${var['name']}"] = {metric}
    assert not unknown, unknown


def test_the_five_dashboards_show_what_the_issue_asks():
    titles = {name: set(panels(board)) for name, board in BOARDS.items()}
    assert set(titles) == {"llmops-serving.json", "llmops-training.json", "llmops-gpu.json", "llmops-compression.json", "llmops-operator.json"}
    assert {"Time to first token", "Inter-token latency", "End-to-end request latency", "Requests/s", "Tokens/s",
            "Generated tokens/s per GPU", "Requests running and waiting", "KV-cache usage", "Error rate"} <= titles["llmops-serving.json"]
    assert {"Loss", "Throughput", "Progress", "ETA", "VRAM per GPU against capacity"} <= titles["llmops-training.json"]
    assert {"Memory used per GPU", "Memory free per GPU", "Memory used per pod, by resource", "Utilisation",
            "Headroom against the 80 % target"} <= titles["llmops-gpu.json"]
    assert {"Quality gate (1 passed, 0 failed)", "Size per stage (bytes on disk)", "Quality per stage"} <= titles["llmops-compression.json"]
    assert {"Reconciles/s", "Reconcile latency p95", "Reconcile errors/s", "Objects per phase", "Work queue depth"} <= titles["llmops-operator.json"]
    # Latency panels give p50, p95 and p99; renamed vLLM series are read under both names.
    serving = {p["title"]: p for p in BOARDS["llmops-serving.json"]["panels"]}
    assert [t["legendFormat"].split()[0] for t in serving["Time to first token"]["targets"]] == ["p50", "p95", "p99"]
    for title, both in (("Inter-token latency", {"vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket"}),
                        ("KV-cache usage", {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"})):
        assert both <= panels(BOARDS["llmops-serving.json"])[title], title


# vLLM 0.6 serves no HTTP series (its V0 server exports in multiprocess mode, without the
# instrumentator): the error-rate panel has nothing to read there.
@pytest.mark.parametrize("vllm_sample, without_source", [("vllm-v0.11.txt", set()), ("vllm-v0.6.txt", {"Error rate"})])
def test_vllm_and_dcgm_panels_have_data_on_the_exporters_real_format(vllm_sample, without_source, tmp_path):
    # One server pod of InferenceService "chat": its vLLM endpoint (labelled by the scrape, as the
    # chart's PodMonitor does) and the DCGM exporter's series for its GPUs (labelled by DCGM itself).
    pod = {"namespace": "llm", "pod": "chat-7d9f-abcde"}
    with ReplayExporter(SAMPLES / vllm_sample) as vllm, ReplayExporter(SAMPLES / "dcgm-exporter.txt", relabel=pod) as dcgm:
        scrape = [{"job_name": "vllm", "static_configs": [{"targets": [vllm.target], "labels": {**pod, "inferenceservice": "chat"}}]},
                  {"job_name": "dcgm", "honor_labels": True, "static_configs": [{"targets": [dcgm.target]}]}]
        with Prometheus(tmp_path / "prometheus", scrape) as prometheus:
            started = time.time()
            deadline = started + 60
            while vllm.scrapes < 6 or dcgm.scrapes < 6:  # rates need a few samples
                assert time.time() < deadline, prometheus.log_tail()
                time.sleep(0.5)
            time.sleep(1.5)
            results = render_all(prometheus.url, started - 5, time.time(), {"namespace": "llm"}, tmp_path / "dashboards", step=1)
    if os.environ.get("LLMOPS_DASHBOARDS_OUT") and vllm_sample == "vllm-v0.11.txt":  # the README's GPU picture (no GPU here)
        shutil.copy(tmp_path / "dashboards" / "llmops-gpu.png", os.environ["LLMOPS_DASHBOARDS_OUT"])
    serving_and_gpu = {name: results[name] for name in ("llmops-serving.json", "llmops-gpu.json")}
    found = problems(serving_and_gpu, lambda reads: bool(reads & EXPORTED))
    assert sorted(found) == sorted(f"llmops-serving.json / {title}: no data (reads ['http_requests_total'])" for title in without_source)
