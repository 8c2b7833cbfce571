"""Unit tests of the dashboard renderer: a hand-written Grafana dashboard against a stub Prometheus."""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import matplotlib.image
import numpy as np
import pytest

from llmops.observability import render
from llmops.observability.render import (
    PrometheusError,
    format_value,
    main,
    prometheus_query_range,
    render_dashboard,
    substitute,
)

START, STEP = 1_767_225_600.0, 30.0
END = START + 1800


def _panel(kind, title, x, y, w, h, *targets, unit=None):
    panel = {"type": kind, "title": title, "gridPos": {"x": x, "y": y, "w": w, "h": h},
             "targets": [{"refId": chr(ord("A") + i), **t} for i, t in enumerate(targets)]}
    if unit:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    return panel


DASHBOARD = {
    "title": "Test serving",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {"name": "namespace", "type": "query", "multi": True, "includeAll": True, "allValue": ".*"},
        {"name": "pod", "type": "query", "multi": True, "includeAll": True},
        {"name": "cluster", "type": "constant", "query": "dev"},
    ]},
    "panels": [
        {"type": "row", "title": "Traffic", "collapsed": False, "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1},
         "panels": []},
        _panel("timeseries", "Requests / s", 0, 1, 12, 8,
               {"expr": 'sum by (code) (rate(http_requests_total{namespace=~"$namespace", cluster="$cluster"}'
                        '[$__rate_interval]))', "legendFormat": "HTTP {{code}}"},
               {"expr": 'sum(rate(http_errors_total{namespace=~"${namespace:regex}", pod=~"${pod}"}[$__rate_interval]))',
                "legendFormat": "errors {{ missing }}"},
               unit="reqps"),
        _panel("stat", "Worst latency", 12, 1, 6, 8,
               {"expr": 'max(max_over_time(request_latency_seconds{namespace=~"$namespace"}[$__range]))'}, unit="s"),
        _panel("stat", "Queue depth", 18, 1, 6, 8, {"expr": 'sum(empty_metric{pod=~"$pod"})'}),
        _panel("timeseries", "Broken", 0, 9, 8, 8,
               {"expr": "not_promql ("}, {"expr": "sum(rate(http_requests_total[$__interval]))", "legendFormat": "total"}),
        _panel("table", "Pods", 8, 9, 8, 8, {"expr": 'kube_pod_info{namespace=~"$namespace"}', "instant": True}),
        _panel("bargauge", "GPU memory", 16, 9, 8, 8, {"expr": 'gpu_memory_used_bytes{pod=~"$pod"}',
                                                       "legendFormat": "{{pod}}"}, unit="bytes"),
        _panel("piechart", "Share", 0, 17, 24, 4, {"expr": "pie_metric"}),
        # Collapsed, as Grafana saves it: the row's panels inside it with their expanded y (22), the panel
        # below moved up to row.y + 1 (22 as well). Expanded, that panel starts at 28: 32 grid rows in all.
        {"type": "row", "title": "Per pod", "collapsed": True, "gridPos": {"x": 0, "y": 21, "w": 24, "h": 1},
         "panels": [_panel("timeseries", "Latency by pod", 0, 22, 24, 6,
                           {"expr": 'histogram_quantile(0.95, sum by (le, pod) '
                                    '(rate(request_latency_seconds_bucket{pod=~"$pod"}[$__rate_interval])))',
                            "legendFormat": "{{pod}}"}, unit="s")]},
        _panel("timeseries", "After the row", 0, 22, 24, 4,
               {"expr": "hidden_metric", "hide": True}, {"expr": 'up{job="llmops"}'}),
    ],
}
GRID_ROWS = 32

# What each target must become with namespace given, pod left to "All", step 30 s over 30 minutes:
# $__rate_interval = max(4 x 30 s, 1m) = 120s, $__interval = 30s, $__range = 1800s, the constant from the model.
EXPECTED_EXPRS = [
    'sum by (code) (rate(http_requests_total{namespace=~"llm-(a|b)", cluster="dev"}[120s]))',
    'sum(rate(http_errors_total{namespace=~"llm-(a|b)", pod=~".*"}[120s]))',
    'max(max_over_time(request_latency_seconds{namespace=~"llm-(a|b)"}[1800s]))',
    'sum(empty_metric{pod=~".*"})',
    "not_promql (",
    "sum(rate(http_requests_total[30s]))",
    'kube_pod_info{namespace=~"llm-(a|b)"}',
    'gpu_memory_used_bytes{pod=~".*"}',
    'histogram_quantile(0.95, sum by (le, pod) (rate(request_latency_seconds_bucket{pod=~".*"}[120s])))',
    'up{job="llmops"}',
]


def _matrix(*label_sets, last=1.0, gap=False):
    """A query_range result: one series per label set, a sine wave ending at `last`, optionally with a hole."""
    times = np.arange(START, END + 1, STEP)
    result = []
    for i, labels in enumerate(label_sets):
        values = [[t, str(last + 0.2 * math.sin((t - END) / 300 + i) - 0.2 * math.sin(i))] for t in times
                  if not (gap and START + 600 < t < START + 900)]
        result.append({"metric": labels, "values": values})
    return result


class StubPrometheus:
    """A query_range that records each expr and answers by the metric it names."""

    def __init__(self):
        self.exprs: list[str] = []
        self.calls: list[tuple[float, float, float]] = []

    def __call__(self, expr, start, end, step):
        self.exprs.append(expr)
        self.calls.append((start, end, step))
        if expr.startswith("not_promql"):
            raise RuntimeError("bad_data: 1:12: parse error: unexpected end of input")
        if "empty_metric" in expr:
            return []
        if expr.startswith("sum(rate(http_requests_total["):
            return _matrix({})
        answers = {
            "http_requests_total": _matrix({"code": "200"}, {"code": "500"}, gap=True),
            "http_errors_total": _matrix({}),
            "request_latency_seconds_bucket": _matrix(*({"pod": f"pod-{i}"} for i in range(12))),
            "request_latency_seconds": _matrix({}, last=0.25),
            "kube_pod_info": _matrix(*({"__name__": "kube_pod_info", "namespace": "llm-a", "pod": f"pod-{i}",
                                        "node": "gpu-node-1"} for i in range(3))),
            "gpu_memory_used_bytes": _matrix({"pod": "pod-0"}, {"pod": "pod-1"}, last=3 * 2**30),
            "up": _matrix({"__name__": "up", "job": "llmops", "instance": "operator:8080"}),
        }
        return next(matrix for metric, matrix in answers.items() if metric in expr)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "not" / "yet" / "serving.png"
    stub = StubPrometheus()
    summary = render_dashboard(DASHBOARD, stub, START, END, out, variables={"namespace": "llm-(a|b)"}, step=STEP)
    return out, stub, summary


def test_png_is_laid_out_by_the_grid(rendered):
    out, _, summary = rendered
    assert summary.out == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    assert width == render.FIG_W_IN * render.DPI == 1600
    # The collapsed row drawn expanded, the panel below it pushed down: 32 grid rows, not 28 or 26.
    expected = (render.HEADER_H_IN + GRID_ROWS * render.UNIT_H_IN + render.FOOTER_H_IN) * render.DPI
    assert abs(height - expected) <= 1, (height, expected)
    # Something was drawn: lines, bars and text in many colours, not a blank page.
    colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50


def test_variables_and_builtins_are_substituted_exactly(rendered):
    _, stub, summary = rendered
    # Hidden targets and unsupported panels' targets are not queried.
    assert stub.exprs == EXPECTED_EXPRS
    assert summary.queries == EXPECTED_EXPRS
    assert set(stub.calls) == {(START, END, STEP)}


@pytest.mark.parametrize(("expr", "step", "expected"), [
    ("rate(x[$__rate_interval])", 10, "rate(x[60s])"),  # never under 1m
    ("rate(x[$__rate_interval])", 30, "rate(x[120s])"),  # 4 x step
    ("rate(x[${__rate_interval}])", 30, "rate(x[120s])"),
    ("avg_over_time(x[$__interval]) / $__interval_ms", 15, "avg_over_time(x[15s]) / 15000"),
    ("increase(x[$__range]) / $__range_s", 15, "increase(x[1800s]) / 1800"),
    ('x{pod=~"$pod", ns=~"${ns:regex}", a="[[pod]]"}', 15, 'x{pod=~"p-1|p-2", ns=~".*", a="p-1|p-2"}'),
    ('x{pod=~"$podname"}', 15, 'x{pod=~"$podname"}'),  # not a variable: a longer name is not $pod
    ('label_replace(x, "dst", "$1", "src", "(.*)")', 15, 'label_replace(x, "dst", "$1", "src", "(.*)")'),
])
def test_substitute(expr, step, expected):
    assert substitute(expr, {"pod": "p-1|p-2", "ns": ".*"}, START, END, step) == expected


def test_panels_report_series_and_data(rendered):
    _, _, summary = rendered
    panels = summary.panels
    assert list(panels) == ["Requests / s", "Worst latency", "Queue depth", "Broken", "Pods", "GPU memory", "Share",
                            "Latency by pod", "After the row"]  # rows are headings, not panels
    assert (panels["Queue depth"].has_data, panels["Queue depth"].series, panels["Queue depth"].errors) == (
        False, 0, [])
    assert (panels["Worst latency"].has_data, panels["Worst latency"].series) == (True, 1)
    assert panels["Requests / s"].legends == ["HTTP 200", "HTTP 500", "errors "]  # a missing label renders empty
    assert panels["After the row"].legends == ['up{instance="operator:8080", job="llmops"}']  # Grafana's auto name
    assert panels["Latency by pod"].series == 12  # all drawn; the legend lists 8 and "+4 more"
    assert panels["Pods"].series == 3 and panels["GPU memory"].series == 2
    assert (panels["Share"].supported, panels["Share"].has_data) == (False, False)
    assert summary.without_data == ["Queue depth", "Share"]


def test_a_failing_query_costs_only_its_panel(rendered):
    _, stub, summary = rendered
    broken = summary.panels["Broken"]
    assert broken.errors == ["A: bad_data: 1:12: parse error: unexpected end of input"]
    assert (broken.series, broken.legends) == (1, ["total"])  # its other query still drawn
    later = stub.exprs[stub.exprs.index("not_promql (") + 1:]
    assert len(later) == 5
    assert all(summary.panels[t].has_data and not summary.panels[t].errors
               for t in ("Pods", "GPU memory", "Latency by pod", "After the row"))


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (0.25, "s", "250 ms"),
    (0.0005, "s", "500 µs"),
    (90, "s", "1.5 min"),
    (12, "ms", "12 ms"),
    (1500, "ms", "1.5 s"),
    (3 * 2**30, "bytes", "3 GiB"),
    (1536, "bytes", "1.5 KiB"),
    (0, "bytes", "0 B"),
    (2.5e9, "decbytes", "2.5 GB"),
    (40960, "mbytes", "40 GiB"),  # the value is in MiB already
    (0.42, "percentunit", "42%"),
    (99.5, "percent", "99.5%"),
    (1500, "reqps", "1.5K req/s"),
    (0.5, "ops", "0.5 ops/s"),
    (1.5e6, "short", "1.5 Mil"),
    (1234.5678, "none", "1235"),
    (0.042, None, "0.042"),
    (2000, "tps", "2K tps"),  # a unit Grafana does not know is a suffix
    (float("nan"), "s", "NaN"),
])
def test_format_value(value, unit, expected):
    assert format_value(value, unit) == expected


# --- the HTTP client and the command line, against a small fake Prometheus -----------------------------------


@pytest.fixture
def prometheus():
    """A local HTTP server speaking /api/v1/query_range: `up` has data, `missing` none, anything else is bad."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            seen.append((self.path, form))
            query = form["query"][0]
            if query in ("up", "missing"):
                status, body = 200, {"status": "success", "data": {"resultType": "matrix", "result": (
                    [{"metric": {"job": "llmops"}, "values": [[START, "1"], [START + STEP, "1"]]}] if query == "up"
                    else [])}}
            else:
                status, body = 400, {"status": "error", "errorType": "bad_data",
                                     "error": 'invalid parameter "query": 1:8: parse error: unclosed left bracket'}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def test_prometheus_client(prometheus):
    url, seen = prometheus
    query_range = prometheus_query_range(url)
    assert query_range("up", START, END, STEP) == [
        {"metric": {"job": "llmops"}, "values": [[START, "1"], [START + STEP, "1"]]}]
    assert seen[0][0] == "/api/v1/query_range"
    assert {k: v[0] for k, v in seen[0][1].items()} == {
        "query": "up", "start": str(START), "end": str(END), "step": str(STEP)}
    with pytest.raises(PrometheusError, match=r"'rate\(up\[' failed: bad_data: .*parse error: unclosed left bracket"):
        query_range("rate(up[", START, END, STEP)


def test_prometheus_client_unreachable():
    with pytest.raises(PrometheusError, match="127.0.0.1:9"):
        prometheus_query_range("http://127.0.0.1:9", timeout=5)("up", START, END, STEP)


def test_cli(prometheus, tmp_path, capsys):
    url, seen = prometheus
    model = {"title": "CLI", "templating": {"list": [{"name": "job", "type": "query"}]}, "panels": [
        _panel("timeseries", "Up", 0, 0, 12, 6, {"expr": "$job"}),
        _panel("stat", "Missing", 12, 0, 12, 6, {"expr": "missing"}),
        _panel("stat", "Bad", 0, 6, 24, 6, {"expr": "rate(up["}),
    ]}
    # Grafana's API wraps the model: {"dashboard": {...}, "meta": {...}}
    (tmp_path / "ops.json").write_text(json.dumps({"dashboard": model, "meta": {}}))
    rc = main(["--prometheus", url, "--start", str(START), "--end", str(END), "--step", "30", "--var", "job=up",
               "--out", str(tmp_path / "png"), str(tmp_path / "ops.json")])
    printed = capsys.readouterr().out
    assert rc == 1  # a failing query is a broken dashboard
    assert (tmp_path / "png" / "ops.png").read_bytes()[:4] == b"\x89PNG"
    assert f"-> {tmp_path / 'png' / 'ops.png'}: 1/3 panels with data" in printed
    assert "  no data: Missing\n" in printed
    assert "  no data: Bad (A: query 'rate(up[' failed: bad_data:" in printed
    assert [form["query"][0] for _, form in seen] == ["up", "missing", "rate(up["]


def test_an_instant_query_shows_only_the_series_current_at_its_latest_data(tmp_path):
    # An object went Pending → Succeeded: the Pending series stopped earlier. Grafana, asking at
    # "now", sees only the current phase; so must the picture (it once counted both).
    def query_range(expr, start, end, step):
        return [{"metric": {"phase": "Pending"}, "values": [[START, "1"], [START + 60, "1"]]},
                {"metric": {"phase": "Succeeded"}, "values": [[START + 90, "1"], [START + 120, "1"]]}]

    board = {"title": "t", "panels": [_panel("bargauge", "phases", 0, 0, 12, 8, {"expr": "x", "instant": True}),
                                      _panel("timeseries", "history", 12, 0, 12, 8, {"expr": "x"})]}
    summary = render_dashboard(board, query_range, START, END, tmp_path / "t.png", step=STEP)
    assert summary.panels["phases"].series == 1 and summary.panels["history"].series == 2
