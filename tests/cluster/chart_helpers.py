"""The chart, as the tests render it: helm from the devcluster's binaries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from llmops.devcluster.build import bin_dir

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmops"


def helm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir() / "helm"), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def render(*sets: str, namespace: str = "llmops-system") -> list[dict]:
    """`helm template` with `--set` values: the documents it renders."""
    done = helm("template", "llmops", str(CHART), "--namespace", namespace, *(f"--set={s}" for s in sets))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]
