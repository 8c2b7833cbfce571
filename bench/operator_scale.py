"""Create N FineTuneJobs at once against the local control plane and time the operator.

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--nodes 64]

Reports p50/p95 of create → Job created and create → status Running, the
built-in Job controller's Job → Pod latency in the same run as the reference,
and the operator's peak RSS and CPU seconds. Times are client-side, from watch
events seen by this process, so all three share one clock.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from llmops.devcluster.cli import install_crds  # noqa: E402
from llmops.devcluster.cluster import LocalCluster, free_port  # noqa: E402

GROUP, VERSION, PLURAL = "llmops.dev", "v1alpha1", "finetunejobs"
NAMESPACE = "bench"


def finetunejob(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "file:///models/tiny", "parameterCount": 1_000_000_000},
            "dataset": {"uri": "file:///data/train.jsonl"},
            "method": "lora",
            "resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"},
            "output": {"uri": f"file:///out/{name}"},
            "podMetadata": {"annotations": {"sim.llmops.dev/outcome": "run"}},
        },
    }


class Recorder:
    """First time each thing was seen, by name, from watch streams."""

    def __init__(self):
        self.lock = threading.Lock()
        self.created: dict[str, float] = {}
        self.job_seen: dict[str, float] = {}
        self.pod_seen: dict[str, float] = {}  # by Job name
        self.running: dict[str, float] = {}
        self.stop = threading.Event()

    def mark(self, table: dict[str, float], key: str) -> None:
        with self.lock:
            table.setdefault(key, time.monotonic())


def watch_jobs(api: client.ApiClient, rec: Recorder) -> None:
    batch = client.BatchV1Api(api)
    for event in watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, timeout_seconds=600):
        rec.mark(rec.job_seen, event["object"].metadata.name)
        if rec.stop.is_set():
            return


def watch_pods(api: client.ApiClient, rec: Recorder) -> None:
    core = client.CoreV1Api(api)
    for event in watch.Watch().stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=600):
        job = (event["object"].metadata.labels or {}).get("job-name")
        if job:
            rec.mark(rec.pod_seen, job)
        if rec.stop.is_set():
            return


def watch_status(api: client.ApiClient, rec: Recorder) -> None:
    custom = client.CustomObjectsApi(api)
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, timeout_seconds=600)
    for event in stream:
        obj = event["object"]
        if (obj.get("status") or {}).get("phase") == "Running":
            rec.mark(rec.running, obj["metadata"]["name"])
        if rec.stop.is_set():
            return


def guarded(target):
    """Watch threads end with the cluster; their connection errors at teardown are not results."""

    def run(*args):
        try:
            target(*args)
        except Exception:  # noqa: BLE001
            pass

    return run


def reconcile_summary(port: int) -> str:
    """Reconciles done and their mean duration, from the operator's own /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("kind") == "FineTuneJob":
                values[(sample.name, sample.labels.get("result"))] = sample.value
    count = values.get(("llmops_reconcile_duration_seconds_count", None), 0)
    total = values.get(("llmops_reconcile_duration_seconds_sum", None), 0)
    return f"operator reconciles: {count:.0f}, mean {1000 * total / max(count, 1):.0f} ms each"


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def process_usage(pid: int) -> tuple[float, float]:
    """(peak RSS MiB, CPU seconds) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--nodes", type=int, default=64, help="8-GPU nodes (enough for every job to run)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.up(node_count=args.nodes, log=lambda m: print(m, file=sys.stderr))
        operator = None
        try:
            install_crds(cluster, REPO / "crds")
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            api.configuration.connection_pool_maxsize = 32
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
            while not any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(NAMESPACE).items):
                time.sleep(0.2)
            metrics_port = free_port()
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LLMOPS_METRICS_PORT": str(metrics_port), "LLMOPS_HF_ENDPOINT": ""}
            log = open(Path(tmp) / "operator.log", "wb")
            operator = subprocess.Popen(
                [sys.executable, "-m", "llmops.main", "--standalone", "-n", NAMESPACE, "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            time.sleep(3)
            rec = Recorder()
            for target in (watch_jobs, watch_pods, watch_status):
                threading.Thread(target=guarded(target), args=(api, rec), daemon=True).start()
            time.sleep(1)
            custom = client.CustomObjectsApi(api)
            names = [f"bench-{i:04d}" for i in range(args.jobs)]

            def submit(name: str) -> None:
                rec.mark(rec.created, name)
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, finetunejob(name))

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(submit, names))
            submitted = time.monotonic() - started
            deadline = started + args.timeout
            while time.monotonic() < deadline and len(rec.running) < len(names):
                time.sleep(0.5)
            rec.stop.set()
            rss, cpu = process_usage(operator.pid)
            wall = time.monotonic() - started

            to_job = [rec.job_seen[n] - rec.created[n] for n in names if n in rec.job_seen]
            to_running = [rec.running[n] - rec.created[n] for n in names if n in rec.running]
            job_to_pod = [rec.pod_seen[n] - rec.job_seen[n] for n in names if n in rec.pod_seen and n in rec.job_seen]
            print(f"\n{args.jobs} FineTuneJobs submitted in {submitted:.1f}s (8 client threads); all Running after {wall:.1f}s; {args.nodes} nodes")
            print(f"{'latency':38} {'p50 s':>8} {'p95 s':>8} {'n':>5}")
            for label, values in (("create -> Job created (operator)", to_job), ("create -> status Running (operator)", to_running),
                                  ("Job -> Pod created (Job controller)", job_to_pod)):
                if values:
                    p50, p95 = percentiles(values)
                    print(f"{label:38} {p50:8.2f} {p95:8.2f} {len(values):5d}")
            if to_job and job_to_pod:
                print(f"ratio create->Job / Job->Pod at p50: {percentiles(to_job)[0] / max(percentiles(job_to_pod)[0], 1e-3):.2f}x, "
                      f"at p95: {percentiles(to_job)[1] / max(percentiles(job_to_pod)[1], 1e-3):.2f}x")
            print(f"operator peak RSS {rss:.0f} MiB, CPU {cpu:.1f} s ({cpu / wall:.2f} cores over the run)")
            print(reconcile_summary(metrics_port))
            return 0 if len(to_running) == len(names) else 1
        finally:
            if operator:
                operator.send_signal(signal.SIGTERM)
                operator.wait(timeout=30)
            cluster.down(quiet=True)


if __name__ == "__main__":
    sys.exit(main())
