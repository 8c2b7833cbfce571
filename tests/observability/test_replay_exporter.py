"""The recorded exporter samples (tests/fixtures/exporters, see its README) and the replay exporter
that serves them to a real Prometheus with counters that move."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.replay_exporter import CONTENT_TYPE, ReplayExporter, is_cumulative

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "exporters"
VLLM_V011, VLLM_V06, DCGM = SAMPLES / "vllm-v0.11.txt", SAMPLES / "vllm-v0.6.txt", SAMPLES / "dcgm-exporter.txt"
ALL = [VLLM_V011, VLLM_V06, DCGM]


def series(text: str) -> dict[tuple[str, frozenset], tuple[str, float]]:
    """(sample name, labels) -> (family type, value), as prometheus_client's own parser reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = (family.type, sample.value)
    return out


def names(text: str) -> set[str]:
    return {name for name, _ in series(text)}


def scrape(exporter: ReplayExporter) -> str:
    with urllib.request.urlopen(exporter.url, timeout=10) as reply:
        assert reply.headers["Content-Type"] == CONTENT_TYPE
        return reply.read().decode()


def cumulative_by_parser(family_type: str, name: str) -> bool:
    """The parser's view, independent of the exporter's own classification."""
    if name.endswith("_created"):
        return False
    return (family_type == "counter"
            or (family_type == "histogram" and name.endswith(("_bucket", "_sum", "_count")))
            or (family_type == "summary" and name.endswith(("_sum", "_count"))))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_sample_parses_and_no_line_is_lost(path):
    text = path.read_text()
    sample_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(series(text)) == len(sample_lines)


# Each entry: the names any one of which a dashboard needs (vLLM renamed some between versions).
VLLM_REQUIRED = {
    "time to first token": {"vllm:time_to_first_token_seconds_bucket"},
    "inter-token latency": {"vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket"},
    "e2e latency": {"vllm:e2e_request_latency_seconds_bucket"},
    "queue time": {"vllm:request_queue_time_seconds_bucket"},
    "prompt tokens": {"vllm:prompt_tokens_total"},
    "generation tokens": {"vllm:generation_tokens_total"},
    "running": {"vllm:num_requests_running"},
    "waiting": {"vllm:num_requests_waiting"},
    "KV-cache usage": {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"},
    "preemptions": {"vllm:num_preemptions_total"},
    "finished requests": {"vllm:request_success_total"},
}


@pytest.mark.parametrize("path", [VLLM_V011, VLLM_V06], ids=lambda p: p.name)
def test_vllm_samples_have_the_series_dashboards_query(path):
    text = path.read_text()
    present = names(text)
    missing = [what for what, options in VLLM_REQUIRED.items() if not options & present]
    assert not missing
    # Every vLLM series says which model it serves: the dashboards group by model_name.
    vllm = [dict(labels) for name, labels in series(text) if name.startswith("vllm:") and name != "vllm:cache_config_info"
            and not name.startswith("vllm:lora_requests_info")]
    assert vllm and all(labels.get("model_name") == "meta-llama/Llama-3.1-8B-Instruct" for labels in vllm)
    reasons = {dict(labels)["finished_reason"] for name, labels in series(text) if name == "vllm:request_success_total"}
    assert reasons == {"stop", "length", "abort"}


def test_vllm_v011_is_the_v1_engine_with_the_api_servers_http_metrics():
    text = VLLM_V011.read_text()
    present = names(text)
    assert {"vllm:inter_token_latency_seconds_bucket", "vllm:kv_cache_usage_perc", "vllm:iteration_tokens_total_bucket",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"} <= present
    assert not {"vllm:gpu_cache_usage_perc", "vllm:num_requests_swapped", "vllm:cpu_cache_usage_perc"} & present
    engines = {dict(labels).get("engine") for name, labels in series(text) if name == "vllm:num_requests_running"}
    assert engines == {"0"}
    http = [dict(labels) for name, labels in series(text) if name == "http_requests_total"]
    assert http and all(set(labels) == {"handler", "method", "status"} for labels in http)
    assert {"/v1/chat/completions", "/v1/completions"} <= {labels["handler"] for labels in http}
    assert {"http_request_duration_seconds_bucket", "http_request_size_bytes_sum"} <= present


def test_vllm_v06_is_the_v0_engine():
    present = names(VLLM_V06.read_text())
    assert {"vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:num_requests_swapped",
            "vllm:time_per_output_token_seconds_bucket"} <= present
    assert not {"vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds_bucket"} & present


def test_dcgm_sample_has_two_gpus_with_kubernetes_labels_and_consistent_memory():
    text = DCGM.read_text()
    by_name: dict[str, dict[str, float]] = {}
    for (name, labels), (_, value) in series(text).items():
        labels = dict(labels)
        assert {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
                "container", "namespace", "pod"} <= set(labels), name
        by_name.setdefault(name, {})[labels["gpu"]] = value
    for name in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL"):
        assert set(by_name[name]) == {"0", "1"}, name
    for gpu in ("0", "1"):  # MiB, as DCGM reports them: used + free + reserved is an H100 80GB's framebuffer
        total = sum(by_name[f"DCGM_FI_DEV_FB_{part}"][gpu] for part in ("USED", "FREE", "RESERVED"))
        assert total == 81559


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_the_second_scrape_doubles_running_totals_and_keeps_the_rest(path):
    recorded = series(path.read_text())
    with ReplayExporter(path) as exporter:
        first, second = series(scrape(exporter)), series(scrape(exporter))
        assert exporter.scrapes == 2
    assert first.keys() == second.keys() == recorded.keys()
    doubled = kept = 0
    for key, (family_type, value) in second.items():
        if cumulative_by_parser(family_type, key[0]):
            assert (first[key][1], value) == (recorded[key][1], 2 * recorded[key][1]), key
            doubled += value > 0
        else:
            assert first[key][1] == value == recorded[key][1], key
            kept += 1
    assert doubled and kept  # the page has both kinds, and some running total really moved


def test_named_series_after_two_scrapes():
    def value(page, name, **labels):
        return next(v for (n, lbl), (_, v) in series(page).items() if n == name and labels.items() <= dict(lbl).items())

    with ReplayExporter(VLLM_V011) as vllm, ReplayExporter(DCGM) as dcgm:
        scrape(vllm), scrape(dcgm)
        vllm_page, dcgm_page = scrape(vllm), scrape(dcgm)
    assert value(vllm_page, "vllm:prompt_tokens_total") == 2 * 392558
    assert value(vllm_page, "vllm:time_to_first_token_seconds_bucket", le="+Inf") == 2 * 240
    assert value(vllm_page, "vllm:num_requests_running") == 14
    assert value(vllm_page, "vllm:kv_cache_usage_perc") == 0.41271
    assert value(dcgm_page, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total", gpu="0") == 2 * 9218834512
    assert value(dcgm_page, "DCGM_FI_DEV_FB_USED", gpu="0") == 74213


def test_only_metrics_is_served():
    with ReplayExporter(DCGM) as exporter:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{exporter.target}/", timeout=10)
        assert err.value.code == 404
        assert exporter.scrapes == 0


def test_relabel_sets_labels_only_where_they_already_are():
    with ReplayExporter(DCGM, relabel={"namespace": "test-ns", "pod": "test-pod"}) as exporter:
        dcgm = series(scrape(exporter))
    assert {(dict(lbl)["namespace"], dict(lbl)["pod"]) for _, lbl in dcgm} == {("test-ns", "test-pod")}
    assert {dict(lbl)["gpu"] for _, lbl in dcgm} == {"0", "1"}  # the other labels are left alone
    assert series(DCGM.read_text()).keys() != dcgm.keys()

    with ReplayExporter(VLLM_V011, relabel={"model_name": "tiny"}) as exporter:
        vllm = series(scrape(exporter))
    models = {dict(lbl).get("model_name") for name, lbl in vllm if name.startswith("vllm:num_requests")}
    assert models == {"tiny"}
    assert all("model_name" not in dict(lbl) for name, lbl in vllm if name.startswith(("http_", "python_")))


def test_add_labels_puts_them_on_every_line_once():
    with ReplayExporter(VLLM_V011, add_labels={"namespace": "ns-a", "model_name": "tiny"}) as exporter:
        page = scrape(exporter)
    lines = [line for line in page.splitlines() if line and not line.startswith("#")]
    assert all(line.count("namespace=") == 1 and line.count("model_name=") == 1 for line in lines)
    assert {(dict(lbl)["namespace"], dict(lbl)["model_name"]) for _, lbl in series(page)} == {("ns-a", "tiny")}


def test_type_lines_in_both_counter_conventions_and_odd_names(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text(
        "# TYPE om_requests counter\n"  # OpenMetrics names the counter family without _total
        'om_requests_total{path="/a}b,c"} 3\n'  # a label value holding '}' and ','
        "om_requests_created 1.7e+09\n"
        "# TYPE vllm:iteration_tokens_total histogram\n"  # a histogram whose own name ends in _total
        'vllm:iteration_tokens_total_bucket{le="+Inf"} 5.0\n'
        "vllm:iteration_tokens_total_count 5.0\n"
        "# TYPE latency summary\n"
        'latency{quantile="0.5"} 0.2\n'
        "latency_sum 4.5\n"
        "# TYPE temperature gauge\n"
        "temperature 41 1700000000000\n"  # a recorded timestamp
        "untyped_total 7\n"
    )
    with ReplayExporter(sample, relabel={"path": "/z"}) as exporter:
        scrape(exporter)
        page = scrape(exporter)
    assert page.splitlines()[1:] == [
        'om_requests_total{path="/z"} 6',
        "om_requests_created 1.7e+09",
        "# TYPE vllm:iteration_tokens_total histogram",
        'vllm:iteration_tokens_total_bucket{le="+Inf"} 10.0',
        "vllm:iteration_tokens_total_count 10.0",
        "# TYPE latency summary",
        'latency{quantile="0.5"} 0.2',
        "latency_sum 9.0",
        "# TYPE temperature gauge",
        "temperature 41",
        "untyped_total 7",
    ]


def test_is_cumulative_reads_prometheus_clients_text_format():
    types = {"vllm:prompt_tokens_total": "counter", "vllm:prompt_tokens_created": "gauge",
             "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "counter", "vllm:num_requests_running": "gauge"}
    assert is_cumulative("vllm:prompt_tokens_total", types)
    assert is_cumulative("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", types)  # dcgm-exporter's counters lack _total
    assert not is_cumulative("vllm:prompt_tokens_created", types)
    assert not is_cumulative("vllm:num_requests_running", types)
    assert not is_cumulative("vllm:num_requests_running_total", types)
