"""Fixtures for tests that run the real operator process against the local control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llmops.devcluster.cluster import free_port

GROUP, VERSION = "llmops.dev", "v1alpha1"


class OperatorProcess:
    """`llmops-operator --standalone --namespace NS` as a child process."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, extra_env: dict[str, str] | None = None):
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.extra_env = extra_env or {}
        self.standalone = True  # False: peer with other replicas on the namespace's KopfPeering
        self.verbose = False  # True: debug logging (every reconcile's decision)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LLMOPS_METRICS_PORT": str(self.metrics_port),
            "LLMOPS_PROGRESS_INTERVAL": "1",
            "LLMOPS_HF_ENDPOINT": "",  # no network in tests
            **self.extra_env,
        }
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmops.main", "--namespace", self.namespace,
             "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz", *(["--standalone"] if self.standalone else []), *(["--verbose"] if self.verbose else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"operator not alive after {timeout}s:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture
def operator(cluster, namespace, tmp_path):
    proc = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log")
    proc.start()
    yield proc
    proc.kill(signal.SIGTERM)
    if "Traceback" in proc.log_tail(200000):
        print(proc.log_tail())


@pytest.fixture(scope="session")
def node_images(cluster):
    """Build (cached) and load images into the real node's containerd: `node_images("finetune", ...)`."""
    from llmops.devcluster import images

    if not cluster.has_real_node:
        pytest.skip("this machine cannot run the real node (see `llmops-devcluster up` output); simulated nodes only")

    def load(*keys: str) -> list[str]:
        refs = images.build(keys, log=print)
        images.load(cluster.node.ctr(), refs, log=print)
        return refs

    return load
