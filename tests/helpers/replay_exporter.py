"""Serve a recorded Prometheus text sample at /metrics as if its exporter were alive.

A recording is one instant: scraped as-is, every counter would stand still and `rate()` would be 0,
so a dashboard query over it could not be told apart from a broken one. The replay therefore
multiplies every cumulative value (counter samples, histogram `_bucket`/`_sum`/`_count`, summary
`_sum`/`_count`) by n, the number of scrapes served so far: scrape n reads n times the recording,
so rates are constant and non-zero and histogram quantiles stay those of the recording (every
bucket scales alike). Gauges, summary quantiles and `_created` timestamps are served unchanged.

    with ReplayExporter(path, relabel={"pod": "my-pod"}) as exporter:
        exporter.target   # "127.0.0.1:PORT", for a Prometheus static_config
        exporter.url      # "http://127.0.0.1:PORT/metrics"
        exporter.scrapes  # scrapes served so far
"""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*"(?:[^"\\]|\\.)*"'
# name{labels} value [timestamp]; a label value may hold any character, '}' and ',' included, so the
# label block is matched label by label rather than up to the first '}'.
_SAMPLE = re.compile(
    rf'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    rf'(?:\{{(?P<labels>\s*(?:{_LABEL}\s*,?\s*)*)\}})?'
    rf'\s+(?P<value>\S+)(?:\s+(?P<timestamp>-?[0-9]+))?\s*$'
)
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')

# Which sample suffixes of a family of each type are cumulative.
_CUMULATIVE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def family_types(text: str) -> dict[str, str]:
    """The `# TYPE` lines of a sample: family name -> type."""
    types = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "#" and parts[1] == "TYPE":
            types[parts[2]] = parts[3]
    return types


def is_cumulative(name: str, types: dict[str, str]) -> bool:
    """Whether the sample `name` is a running total, judged by its family's TYPE line.

    Names are split at the known suffixes only, never at ':' (vLLM's names have colons). Two
    conventions name a counter's family: prometheus_client's text format 0.0.4 says
    `# TYPE x_total counter` (an exact match here), OpenMetrics says `# TYPE x counter`
    (matched after taking `_total` off); dcgm-exporter's counters have no `_total` at all. A
    histogram may itself end in `_total` (vllm:iteration_tokens_total): taking `_bucket` off finds
    it. `_created` timestamps end in none of the cumulative suffixes, so they stay as recorded.
    """
    if types.get(name) == "counter":
        return True
    for family_type, suffixes in _CUMULATIVE_SUFFIXES.items():
        for suffix in suffixes:
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == family_type:
                return True
    return False


def _scaled(value: str, n: int) -> str:
    try:
        return str(int(value) * n)  # dcgm-exporter writes integers: keep them integers, exactly
    except ValueError:
        return repr(float(value) * n)  # also right for +Inf and NaN


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ReplayExporter:
    """An HTTP server on a free port serving `path` at /metrics, scaled per scrape (see module doc).

    relabel: label -> value, set on every sample line that already has that label (point a
    recording's namespace/pod or model_name at the test's own objects).
    add_labels: label -> value, put on every sample line (replacing the value where the label
    is already there, since Prometheus rejects a line that names a label twice).
    host: the address to bind; the default 127.0.0.1 suits a Prometheus on the same machine.
    """

    def __init__(self, path: str | Path, *, relabel: dict[str, str] | None = None,
                 add_labels: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.text = Path(path).read_text()
        self.types = family_types(self.text)
        self.relabel = dict(relabel or {})
        self.add_labels = dict(add_labels or {})
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._scrapes = 0

    def render(self, n: int) -> str:
        """The page the n-th scrape gets."""
        return "".join(self._render_line(line, n) + "\n" for line in self.text.splitlines())

    def _render_line(self, line: str, n: int) -> str:
        match = _SAMPLE.match(line)
        if not match:  # comments, blank lines
            return line
        name, value = match["name"], match["value"]
        labels = _LABEL_PAIR.findall(match["labels"] or "")
        labels = [(key, _escape(self.relabel[key]) if key in self.relabel else raw) for key, raw in labels]
        for key, new in self.add_labels.items():
            labels = [pair for pair in labels if pair[0] != key] + [(key, _escape(new))]
        if is_cumulative(name, self.types):
            value = _scaled(value, n)
        label_block = "{" + ",".join(f'{key}="{raw}"' for key, raw in labels) + "}" if labels else ""
        # A recorded timestamp is dropped: it would pin every scrape to the recording's instant,
        # which Prometheus would take as the same (or an out-of-order) sample each time.
        return f"{name}{label_block} {value}"

    @property
    def scrapes(self) -> int:
        with self._lock:
            return self._scrapes

    @property
    def target(self) -> str:
        if self._server is None:
            raise RuntimeError("the exporter is not started")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def _next_page(self) -> bytes:
        with self._lock:
            self._scrapes += 1
            n = self._scrapes
        return self.render(n).encode()

    def start(self) -> ReplayExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter._next_page()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output free of one line per scrape
                pass

        self._server = ThreadingHTTPServer(self._address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="replay-exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> ReplayExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
