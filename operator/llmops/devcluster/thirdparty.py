"""CRDs of other projects whose objects the chart can render (the Prometheus Operator's
ServiceMonitor, PodMonitor and PrometheusRule), so tests can apply every chart toggle to the
local API server. Fetched from the Go module proxy, like the control plane's sources: the
module's zip carries the CRD manifests the Prometheus Operator releases."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
MONITORING_KINDS = ("servicemonitors", "podmonitors", "prometheusrules")


def monitoring_crds() -> list[Path]:
    """The three CRD manifests, from the module cache (downloaded once)."""
    with tempfile.TemporaryDirectory(prefix="llmops-thirdparty-") as work:  # outside any go.mod
        done = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], cwd=work, capture_output=True, text=True,
                              env={**os.environ, "GOFLAGS": "-mod=mod"}, timeout=600)
    found = json.loads(done.stdout or "{}")
    if done.returncode or not found.get("Dir"):
        raise RuntimeError(f"go mod download {PROMETHEUS_OPERATOR} failed: {found.get('Error') or done.stderr[-2000:]}")
    folder = Path(found["Dir"]) / "example" / "prometheus-operator-crd"
    return [folder / f"monitoring.coreos.com_{kind}.yaml" for kind in MONITORING_KINDS]
