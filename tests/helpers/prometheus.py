"""A real Prometheus (Debian's package, installed by scripts/setup.sh) for tests: start it on a
config, wait until it has scraped, query it. Also turns the chart's PodMonitor into the scrape
config the Prometheus Operator would generate from it, so tests scrape our pods with the same
relabeling the chart ships.

Debian builds Prometheus without Kubernetes service discovery, so `PodDiscovery` stands in for
it: an HTTP SD endpoint listing the namespace's pods with the `__meta_kubernetes_pod_*` labels
kubernetes_sd (role pod) gives, one target per container port."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from llmops.devcluster.cluster import free_port


class Prometheus:
    def __init__(self, folder: Path, scrape_configs: list[dict[str, Any]], rule_files: list[Path] = ()):
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("prometheus is not installed (scripts/setup.sh installs Debian's package)")
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files], "scrape_configs": scrape_configs}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        self.log = open(self.folder / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.folder / 'prometheus.yml'}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-chars:]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return json.loads(resp.read())["data"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path} {params}: {err.read().decode(errors='replace')}") from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]


class PodDiscovery:
    """Prometheus HTTP service discovery of one namespace's pods, labelled as kubernetes_sd labels them."""

    def __init__(self, core, namespace: str):
        self.core, self.namespace = core, namespace
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = json.dumps(discovery.targets()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> "PodDiscovery":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()

    def targets(self) -> list[dict[str, Any]]:
        groups = []
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            if not pod.status.pod_ip:
                continue
            labels = {"__meta_kubernetes_namespace": self.namespace, "__meta_kubernetes_pod_name": pod.metadata.name,
                      "__meta_kubernetes_pod_phase": pod.status.phase or "",
                      **{f"__meta_kubernetes_pod_label_{_label_name(k)}": v for k, v in (pod.metadata.labels or {}).items()}}
            for container in pod.spec.containers:
                for port in container.ports or []:
                    groups.append({"targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                                   "labels": {**labels, "__meta_kubernetes_pod_container_name": container.name,
                                              "__meta_kubernetes_pod_container_port_name": port.name or ""}})
        return groups


def podmonitor_scrape_configs(podmonitor: dict[str, Any], discovery: PodDiscovery) -> list[dict[str, Any]]:
    """The scrape configs the Prometheus Operator makes of a PodMonitor (pod discovery): keep the
    selected pods' named port, label the series with the namespace and pod, then the PodMonitor's
    own relabelings."""
    spec = podmonitor["spec"]
    selected = [(f"__meta_kubernetes_pod_label_{_label_name(key)}", value) for key, value in spec["selector"]["matchLabels"].items()]
    configs = []
    for endpoint in spec["podMetricsEndpoints"]:
        relabel = [{"source_labels": [source], "regex": value, "action": "keep"} for source, value in selected]
        relabel += [
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"], "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Running", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        ]
        relabel += [{_snake(key): value for key, value in rule.items()} for rule in endpoint.get("relabelings", [])]
        configs.append({
            "job_name": f"podmonitor/{podmonitor['metadata']['name']}/{endpoint['port']}",
            "metrics_path": endpoint.get("path", "/metrics"),
            "http_sd_configs": [{"url": discovery.url, "refresh_interval": "1s"}],
            "relabel_configs": relabel,
        })
    return configs


def _label_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
