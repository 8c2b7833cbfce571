"""Create N FineTuneJobs at once against the local control plane and time the operator
against the built-in Job controller doing the same amount of work.

    .venv/bin/python bench/operator_scale.py                  # 500 jobs
    .venv/bin/python bench/operator_scale.py --jobs 500 1000  # each size on a fresh cluster, then a summary

Each size gets a fresh local cluster (max(--nodes, jobs / 8) nodes of 8 GPUs, so every
1-GPU job can run) and two phases, one after the other:

1. Baseline, in namespace `baseline`, BEFORE the operator starts: N plain batch/v1 Jobs
   (one pod, 1 GPU, the GPU toleration and node selector, `sim.llmops.dev/outcome: run`,
   shaped like the operator's Job), submitted by the same 8 client threads. Timed Job
   create -> Pod created (the Job controller's work). Before, so that neither the
   operator's process nor its N running pods compete with it, and the cluster starts
   from the same empty state as the operator phase; the Jobs are then deleted and their
   pods waited out, so the GPUs are free again.
2. Operator, in namespace `bench` (the only namespace it watches): N FineTuneJobs by the
   same 8 threads, timed create -> Job created and create -> status Running.

Times are client-side, from watch events seen by this process (one clock for all).
`create` is taken just before the create request is sent, in both phases.

The operator runs as a subprocess from this checkout (PYTHONPATH=<repo>/operator) with
its own service-account credentials (cluster-admin), so the API server's audit log
(policy: Metadata level, write verbs, that user only) counts its writes apart from this
process (which also sends the user agent `llmops-bench`). The count is all writes of the
run: from the first FineTuneJob create until all are Running and the operator has then
written nothing for 5 s (Events still queued at Running belong to the run), divided by
N; the part after all were Running is shown apart, as is the count up to all Running.
Also printed: the operator's peak RSS (VmHWM) and CPU seconds at the moment all are
Running, and its reconciles from its /metrics. The issue's targets are printed with
PASS/MISS next to them; nothing is asserted (the exit status only says whether every
job got as far as Running).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from llmops.devcluster.cli import install_crds  # noqa: E402
from llmops.devcluster.cluster import LocalCluster, free_port  # noqa: E402

GROUP, VERSION, PLURAL, KIND = "llmops.dev", "v1alpha1", "finetunejobs", "FineTuneJob"
OPERATOR_NS = "bench"        # the operator watches this namespace only
BASELINE_NS = "baseline"     # plain Jobs, never watched by the operator (it is not even running then)
SYSTEM_NS = "llmops-system"  # the operator's service account
OPERATOR_SA = "llmops-operator"
OPERATOR_USER = f"system:serviceaccount:{SYSTEM_NS}:{OPERATOR_SA}"
BENCH_USER_AGENT = "llmops-bench"
CLIENT_THREADS = 8
GPUS_PER_NODE = 8
GPU_TYPE = "NVIDIA-H100-80GB-HBM3"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
# After all are Running the operator may still be posting (queued Events): the run's writes are
# counted until it has written nothing for QUIET_SECONDS (at most SETTLE_MAX_SECONDS).
QUIET_SECONDS = 5.0
SETTLE_MAX_SECONDS = 90.0

# The issue's targets (printed, not asserted).
TARGET_RATIO = 1.5
TARGET_WRITES = 4.0
TARGET_RSS_MIB = 200.0


# -- objects ---------------------------------------------------------------------
def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "file:///models/tiny", "parameterCount": 1_000_000_000},
            "dataset": {"uri": "file:///data/train.jsonl"},
            "method": "lora",
            "resources": {"gpusPerNode": 1, "gpuType": GPU_TYPE},
            "output": {"uri": f"file:///out/{name}"},
            "podMetadata": {"annotations": {"sim.llmops.dev/outcome": "run"}},
        },
    }


def baseline_job(name: str) -> dict[str, Any]:
    """A Job shaped like the operator's (llmops/builders/finetune.py): one pod, 1 GPU, same scheduling constraints."""
    gpu = {"nvidia.com/gpu": "1"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "llmops-bench"}},
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "suspend": False,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/part-of": "llmops-bench"}, "annotations": {"sim.llmops.dev/outcome": "run"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "trainer",
                        "image": "ghcr.io/llmops-dev/runner-finetune:0.1.0",
                        "command": ["python", "-m", "llmops_runners.finetune"],
                        "env": [{"name": "NNODES", "value": "1"}, {"name": "NPROC_PER_NODE", "value": "1"}],
                        "resources": {"requests": dict(gpu), "limits": dict(gpu)},
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                    "nodeSelector": {"nvidia.com/gpu.product": GPU_TYPE},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],  # one event per request (ResponseComplete)
    "rules": [
        {"level": "Metadata", "users": [OPERATOR_USER], "verbs": list(WRITE_VERBS)},
        {"level": "None"},
    ],
}


OPERATOR_BOOT = (
    "import runpy, sys, llmops; print('llmops from', llmops.__file__, flush=True); "
    "runpy.run_module('llmops.main', run_name='__main__', alter_sys=True)"
)


# -- watching --------------------------------------------------------------------
class Timeline:
    """First time each thing was seen, by the FineTuneJob's or baseline Job's name."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tables: dict[str, dict[str, float]] = {}

    def mark(self, table: str, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.tables.setdefault(table, {}).setdefault(key, now)

    def get(self, table: str) -> dict[str, float]:
        with self.lock:
            return dict(self.tables.get(table, {}))

    def count(self, table: str) -> int:
        with self.lock:
            return len(self.tables.get(table, {}))


def owner(obj: dict[str, Any], kind: str) -> str | None:
    return next((ref["name"] for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("kind") == kind), None)


class Watcher(threading.Thread):
    """A raw (dict) watch that survives server timeouts and 410s; `ready` once the first list is done."""

    def __init__(self, list_fn: Callable, args: tuple, on_object: Callable[[dict[str, Any]], None]):
        super().__init__(daemon=True)
        self.list_fn, self.args, self.on_object = list_fn, args, on_object
        self.ready, self.stop = threading.Event(), threading.Event()
        self.error: Exception | None = None

    def relist(self) -> str:
        listing = json.loads(self.list_fn(*self.args, _preload_content=False).data)
        for item in listing.get("items", []):
            self.on_object(item)
        return listing["metadata"]["resourceVersion"]

    def run(self) -> None:
        try:
            version = self.relist()
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        while not self.stop.is_set():
            try:
                resp = self.list_fn(*self.args, watch=True, resource_version=version, allow_watch_bookmarks=True,
                                    timeout_seconds=30, _preload_content=False, _request_timeout=60)
                try:
                    for line in iter_resp_lines(resp):
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # 410 Gone: our version is too old
                            version = self.relist()
                            break
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self.on_object(event["object"])
                        if self.stop.is_set():
                            return
                finally:
                    resp.release_conn()
            except Exception:  # noqa: BLE001  (connection errors at teardown are not results)
                if self.stop.is_set():
                    return
                time.sleep(0.5)


def start_watchers(*watchers: Watcher) -> list[Watcher]:
    for w in watchers:
        w.start()
    for w in watchers:
        w.ready.wait(60)
        if w.error:
            raise w.error
    return list(watchers)


def stop_watchers(watchers: list[Watcher]) -> None:
    for w in watchers:
        w.stop.set()


# -- helpers ---------------------------------------------------------------------
def submit(names: list[str], create: Callable[[str], None], tl: Timeline) -> tuple[float, list[str]]:
    """Create every object from CLIENT_THREADS threads; (seconds taken, errors)."""
    errors: list[str] = []

    def one(name: str) -> None:
        tl.mark("created", name)
        try:
            create(name)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name}: {getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        list(pool.map(one, names))
    return time.monotonic() - started, errors


def wait_for(done: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(interval)
    return done()


def latencies(tl: Timeline, start: str, end: str, names: list[str]) -> list[float]:
    a, b = tl.get(start), tl.get(end)
    return [b[n] - a[n] for n in names if n in a and n in b]


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95, nearest rank."""
    ordered = sorted(values)
    rank = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return rank(0.50), rank(0.95)


def process_usage(pid: int) -> tuple[float, float]:
    """(peak RSS MiB, CPU seconds) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return peak_kib / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconcile_stats(port: int) -> dict[str, float] | None:
    """FineTuneJob reconciles from the operator's /metrics, summed over whatever other labels there are."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("kind") != KIND:
                continue
            if sample.name == "llmops_reconcile_total":
                out["total"] = out.get("total", 0) + sample.value
                if sample.labels.get("result") not in (None, "success", "ok"):
                    out["errors"] = out.get("errors", 0) + sample.value
            elif sample.name == "llmops_reconcile_duration_seconds_count":
                out["count"] = out.get("count", 0) + sample.value
            elif sample.name == "llmops_reconcile_duration_seconds_sum":
                out["seconds"] = out.get("seconds", 0) + sample.value
    return out


def wait_ready_namespace(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items), 60)


def operator_kubeconfig(api: client.ApiClient, cluster: LocalCluster, path: Path) -> None:
    """A service account of its own (cluster-admin) for the operator: the audit log tells its writes apart."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=SYSTEM_NS)))
    core.create_namespaced_service_account(SYSTEM_NS, {"metadata": {"name": OPERATOR_SA}})
    rbac.create_cluster_role_binding({
        "metadata": {"name": "llmops-bench-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": SYSTEM_NS}],
    })
    token = core.create_namespaced_service_account_token(OPERATOR_SA, SYSTEM_NS, {"spec": {"audiences": [], "expirationSeconds": 6 * 3600}}).status.token
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "llmops-local", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "llmops-local", "context": {"cluster": "llmops-local", "user": OPERATOR_SA, "namespace": OPERATOR_NS}}],
        "current-context": "llmops-local",
    }))
    path.chmod(0o600)


def operator_writes(audit_log: Path, windows: list[tuple[float, float]]) -> tuple[list[Counter], list[Counter]]:
    """Per window [start, end) of wall time: the operator's write requests by (resource, verb), and by response code."""
    by_kind = [Counter() for _ in windows]
    by_code = [Counter() for _ in windows]
    with open(audit_log) as f:
        for line in f:
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            if event.get("verb") not in WRITE_VERBS:
                continue
            at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            for i, (start, end) in enumerate(windows):
                if start <= at < end:
                    by_kind[i][(resource, event["verb"])] += 1
                    by_code[i][(event.get("responseStatus") or {}).get("code", 0)] += 1
    return by_kind, by_code


def wait_quiet(audit_log: Path | None) -> bool:
    """Until the audit log (only the operator's writes) has not grown for QUIET_SECONDS; False at SETTLE_MAX_SECONDS."""
    if audit_log is None:
        time.sleep(QUIET_SECONDS)
        return True
    deadline = time.monotonic() + SETTLE_MAX_SECONDS
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = audit_log.stat().st_size if audit_log.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= QUIET_SECONDS:
            return True
        time.sleep(0.5)
    return False


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# -- one size --------------------------------------------------------------------
def run_size(jobs: int, nodes: int, timeout: float, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"jobs": jobs, "nodes": nodes, "ok": False}
    policy = tmp / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    try:
        cluster = LocalCluster(tmp / f"cluster-{jobs}", audit_policy=policy)
    except TypeError:  # a devcluster without the audit option: no write counts
        cluster = LocalCluster(tmp / f"cluster-{jobs}")
    audit_log = getattr(cluster, "audit_log", None)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cluster.up(node_count=nodes, timeout=300, log=say)
    operator = None
    watchers: list[Watcher] = []
    try:
        install_crds(cluster, REPO / "crds")
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        api.user_agent = BENCH_USER_AGENT
        core, batch, custom = client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)
        for ns in (BASELINE_NS, OPERATOR_NS):
            wait_ready_namespace(core, ns)
        op_kubeconfig = tmp / f"operator-{jobs}.kubeconfig"
        operator_kubeconfig(api, cluster, op_kubeconfig)

        # -- phase 1: the Job controller alone ------------------------------------
        say(f"[{jobs}] baseline: {jobs} Jobs in namespace {BASELINE_NS}")
        base = Timeline()

        def on_baseline_pod(pod: dict[str, Any]) -> None:
            job = owner(pod, "Job")
            if job:
                base.mark("pod", job)
                if (pod.get("status") or {}).get("phase") == "Running":
                    base.mark("pod_running", job)

        watchers = start_watchers(Watcher(core.list_namespaced_pod, (BASELINE_NS,), on_baseline_pod))
        base_names = [f"base-{i:04d}" for i in range(jobs)]
        started = time.monotonic()
        base_submit, base_errors = submit(
            base_names, lambda n: batch.create_namespaced_job(BASELINE_NS, baseline_job(n), _preload_content=False), base)
        wait_for(lambda: base.count("pod_running") >= jobs, timeout)
        base_wall = time.monotonic() - started
        stop_watchers(watchers)
        say(f"[{jobs}] baseline done in {base_wall:.1f}s; deleting its Jobs")
        batch.delete_collection_namespaced_job(BASELINE_NS, propagation_policy="Background")
        if not wait_for(lambda: not core.list_namespaced_pod(BASELINE_NS, limit=1).items, 300, interval=1):
            say(f"[{jobs}] warning: baseline pods still present after 300 s")
        time.sleep(3)

        # -- phase 2: the operator ------------------------------------------------
        metrics_port, live_port = free_port(), free_port()
        operator_path = str(REPO / "operator")
        env = {
            **os.environ,
            "KUBECONFIG": str(op_kubeconfig),
            "PYTHONPATH": os.pathsep.join(p for p in (operator_path, os.environ.get("PYTHONPATH", "")) if p),
            "LLMOPS_METRICS_PORT": str(metrics_port),
            "LLMOPS_HF_ENDPOINT": "",
        }
        log_path = tmp / f"operator-{jobs}.log"
        with open(log_path, "wb") as log:
            # `python -m llmops.main`, saying first (in its log) which llmops it runs.
            operator = subprocess.Popen(
                [sys.executable, "-c", OPERATOR_BOOT, "--standalone", "-n", OPERATOR_NS, "--liveness", f"http://127.0.0.1:{live_port}/healthz"],
                env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
            )
        op_started = time.monotonic()

        def healthy() -> bool:
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited ({operator.returncode}):\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{live_port}/healthz", timeout=2).status == 200
            except OSError:
                return False

        if not wait_for(healthy, 120, interval=0.5):
            say(f"[{jobs}] warning: operator liveness endpoint not up after 120 s; going on")
        time.sleep(2)  # let its watch streams open
        first_line = log_path.read_text(errors="replace").partition("\n")[0]
        code_from = first_line.removeprefix("llmops from ") if first_line.startswith("llmops from ") else "?"
        say(f"[{jobs}] operator up in {time.monotonic() - op_started:.1f}s ({code_from}); {jobs} FineTuneJobs in namespace {OPERATOR_NS}")

        tl = Timeline()

        def on_job(job: dict[str, Any]) -> None:
            parent = owner(job, KIND) or (job["metadata"].get("labels") or {}).get("llmops.dev/name")
            if parent:
                tl.mark("job", parent)

        def on_ftj(obj: dict[str, Any]) -> None:
            if (obj.get("status") or {}).get("phase") == "Running":
                tl.mark("running", obj["metadata"]["name"])

        watchers = start_watchers(
            Watcher(batch.list_namespaced_job, (OPERATOR_NS,), on_job),
            Watcher(custom.list_namespaced_custom_object, (GROUP, VERSION, OPERATOR_NS, PLURAL), on_ftj),
        )
        names = [f"bench-{i:04d}" for i in range(jobs)]
        t0_wall, started = time.time(), time.monotonic()
        op_submit, op_errors = submit(
            names, lambda n: custom.create_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, PLURAL, finetunejob(n), _preload_content=False), tl)
        all_running = wait_for(lambda: tl.count("running") >= jobs, timeout)
        t1_wall, op_wall = time.time(), time.monotonic() - started
        rss, cpu = process_usage(operator.pid)
        op_alive = time.monotonic() - op_started
        recon = reconcile_stats(metrics_port)
        say(f"[{jobs}] operator phase done in {op_wall:.1f}s; waiting for its writes to stop")
        quiet = wait_quiet(Path(audit_log) if audit_log else None)
        t2_wall = time.time()
        stop_watchers(watchers)
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        operator = None

        # -- report -----------------------------------------------------------------
        base_pod = latencies(base, "created", "pod", base_names)
        base_running = latencies(base, "created", "pod_running", base_names)
        to_job = latencies(tl, "created", "job", names)
        to_running = latencies(tl, "created", "running", names)
        print(f"\n=== {jobs} jobs, {nodes} nodes x {GPUS_PER_NODE} GPUs, {CLIENT_THREADS} client threads; operator code {code_from} ===")
        print(f"baseline (ns {BASELINE_NS}, before the operator starts): {jobs} Jobs submitted in {base_submit:.1f}s, "
              f"{len(base_pod)} Pods created, {len(base_running)} Running after {base_wall:.1f}s")
        print(f"operator (ns {OPERATOR_NS}): {jobs} FineTuneJobs submitted in {op_submit:.1f}s, "
              f"{len(to_job)} Jobs created, {len(to_running)} Running after {op_wall:.1f}s")
        for label, errors in (("baseline", base_errors), ("operator", op_errors)):
            if errors:
                print(f"  {label}: {len(errors)} create requests failed, e.g. {errors[0]}")
        print(f"{'latency (s)':48} {'p50':>8} {'p95':>8} {'n':>6}")
        rows = (("baseline  Job create -> Pod created", base_pod, "base"),
                ("baseline  Job create -> Pod Running (context)", base_running, None),
                ("operator  FineTuneJob create -> Job created", to_job, "job"),
                ("operator  FineTuneJob create -> status Running", to_running, "running"))
        for label, values, key in rows:
            if values:
                p50, p95 = percentiles(values)
                print(f"{label:48} {p50:8.2f} {p95:8.2f} {len(values):6d}")
                if key:
                    result[f"{key}_p50"], result[f"{key}_p95"] = p50, p95
            else:
                print(f"{label:48} {'-':>8} {'-':>8} {0:6d}")
        ratios = (None, None)
        if to_job and base_pod:
            ratios = (result["job_p50"] / max(result["base_p50"], 1e-3), result["job_p95"] / max(result["base_p95"], 1e-3))
            print(f"ratio operator create->Job / baseline create->Pod: p50 {ratios[0]:.2f}x, p95 {ratios[1]:.2f}x")
        result["ratio_p50"], result["ratio_p95"] = ratios

        per_job = None
        if audit_log and Path(audit_log).exists():
            (to_running_w, tail, before), (codes, tail_codes, _) = operator_writes(
                Path(audit_log), [(t0_wall, t1_wall), (t1_wall, t2_wall), (0, t0_wall)])
            whole = to_running_w + tail
            per_job = sum(whole.values()) / jobs
            errors = {c: n for c, n in (codes + tail_codes).items() if not 200 <= c < 300}
            print(f"operator API writes (audit log), all of the run: first create -> all Running (+{t1_wall - t0_wall:.1f}s) "
                  f"-> {'quiet' if quiet else 'still writing'} (+{t2_wall - t0_wall - (QUIET_SECONDS if quiet else 0):.1f}s): "
                  f"{sum(whole.values())} = {per_job:.2f} per FineTuneJob")
            print(f"    {'verb':8} {'resource':28} {'total':>6} {'/job':>6} {'of them after all Running':>26}")
            for (resource, verb), n in sorted(whole.items(), key=lambda kv: -kv[1]):
                print(f"    {verb:8} {resource:28} {n:6d} {n / jobs:6.2f} {tail.get((resource, verb), 0):26d}")
            print(f"  up to all Running only: {sum(to_running_w.values())} = {sum(to_running_w.values()) / jobs:.2f} per FineTuneJob; "
                  f"answered with an error: {', '.join(f'{c}: {n}' for c, n in sorted(errors.items())) or 'none'}; "
                  f"start-up writes before the first create (not counted): {sum(before.values())}")
        else:
            print("operator API writes: n/a (this devcluster has no audit log option)")
        result["writes_per_job"] = per_job
        result["rss"], result["cpu"] = rss, cpu
        print(f"operator peak RSS {rss:.0f} MiB, CPU {cpu:.1f} s from its start to all Running "
              f"({cpu / op_alive:.2f} cores over its {op_alive:.0f}s)")
        if recon is None:
            print("operator reconciles: n/a (no /metrics)")
        else:
            count = recon.get("total", recon.get("count"))
            mean = f", mean {1000 * recon['seconds'] / max(recon['count'], 1):.0f} ms each" if "seconds" in recon and recon.get("count") else ""
            errors = f", {recon['errors']:.0f} not successful" if recon.get("errors") else ""
            print(f"operator reconciles ({KIND}): " + (f"{count:.0f} = {count / jobs:.1f} per job{mean}{errors}" if count is not None else "n/a (metric not found)"))
            result["reconciles"] = count
        print("targets:")
        print(f"  create->Job p50 <= {TARGET_RATIO}x baseline: {ratios[0] if ratios[0] is not None else float('nan'):.2f}x  {verdict(None if ratios[0] is None else ratios[0] <= TARGET_RATIO)}")
        print(f"  create->Job p95 <= {TARGET_RATIO}x baseline: {ratios[1] if ratios[1] is not None else float('nan'):.2f}x  {verdict(None if ratios[1] is None else ratios[1] <= TARGET_RATIO)}")
        print(f"  API writes per FineTuneJob <= {TARGET_WRITES:.0f} (all of the run): {per_job if per_job is not None else float('nan'):.2f}  "
              f"{verdict(None if per_job is None else per_job <= TARGET_WRITES)}")
        print(f"  operator peak RSS <= {TARGET_RSS_MIB:.0f} MiB: {rss:.0f} MiB  {verdict(rss <= TARGET_RSS_MIB)}")
        sys.stdout.flush()
        result["ok"] = all_running and len(base_pod) == jobs
        return result
    finally:
        stop_watchers(watchers)
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        cluster.down(quiet=True)


def summary(results: list[dict[str, Any]]) -> None:
    def f(value, spec=".2f"):
        return "-" if value is None else format(value, spec)

    print("\n=== summary (seconds; ratio = operator create->Job / baseline create->Pod) ===")
    head = ("jobs", "nodes", "base p50", "base p95", "Job p50", "Job p95", "ratio50", "ratio95", "Run p50", "Run p95",
            "writes/j", "RSS MiB", "CPU s", "reconc.")
    print(" ".join(f"{h:>8}" for h in head))
    for r in results:
        cells = (str(r["jobs"]), str(r["nodes"]), f(r.get("base_p50")), f(r.get("base_p95")), f(r.get("job_p50")), f(r.get("job_p95")),
                 f(r.get("ratio_p50")), f(r.get("ratio_p95")), f(r.get("running_p50")), f(r.get("running_p95")),
                 f(r.get("writes_per_job")), f(r.get("rss"), ".0f"), f(r.get("cpu"), ".1f"), f(r.get("reconciles"), ".0f"))
        print(" ".join(f"{c:>8}" for c in cells))
    print(f"targets: ratio50, ratio95 <= {TARGET_RATIO}; writes/j <= {TARGET_WRITES:.0f}; RSS <= {TARGET_RSS_MIB:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[500], help="one or more sizes, each on a fresh cluster (default 500)")
    parser.add_argument("--nodes", type=int, default=64, help="8-GPU nodes; raised to jobs/8 when that is more (every job must be able to run)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds each phase may take")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        for jobs in args.jobs:
            nodes = max(args.nodes, math.ceil(jobs / GPUS_PER_NODE))
            size_dir = Path(tmp) / str(jobs)
            size_dir.mkdir()
            try:
                results.append(run_size(jobs, nodes, args.timeout, size_dir))
            except Exception as exc:  # noqa: BLE001  (one size failing should not lose the others)
                print(f"\n=== {jobs} jobs: failed: {type(exc).__name__}: {exc}", flush=True)
                results.append({"jobs": jobs, "nodes": nodes, "ok": False})
    if len(results) > 1:
        summary(results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
