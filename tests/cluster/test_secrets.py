"""Secrets never appear: a token planted in a Secret that all three kinds reference reaches the
pods only by reference (`env.valueFrom.secretKeyRef`), and never anything the operator writes or
logs (ConfigMaps, Services, Jobs, Deployments, Pods, statuses, Events, annotations, its log and
its /metrics).

kwok plays the pods (GPU pods on the simulated GPU nodes, the CPU engine's pod on one of them by a
toleration and a node selector), so the whole chain runs through the operator's paths: a
FineTuneJob and a CompressionJob to Succeeded, two InferenceServices (vLLM with an adapter, and
the CPU engine whose ConfigMap carries the runner's serve.json) until their replicas run. The
operator runs with --verbose, so that every reconcile's decision is in the log that is scanned.

The scan is proved able to fail: the same scan, run again after the test plants the token (raw, and
base64 at every alignment inside a larger base64 blob) in a ConfigMap annotation, a ConfigMap's
data and an Event of its own, and in a copy of the operator's log, must find exactly those.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import time
import uuid
from typing import Any, Iterator

import pytest

from conftest import OperatorProcess
from finetune_helpers import GROUP, VERSION, finetunejob, succeed_with
from waiting import wait_for

pytestmark = pytest.mark.cluster

SECRET, KEY = "hub-credentials", "hub-token"  # a key other than the default "token": the key is wired too
REF = {"name": SECRET, "key": KEY}
TOKEN_ENV = "HF_TOKEN"
H100 = {"gpus": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}
ON_A_KWOK_NODE = {"nodeSelector": {"type": "kwok"},  # the CPU engine's pod, simulated: no GPU, but on a kwok node
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
COMPRESS_REPORT = {
    "status": "Succeeded", "reason": "Completed", "message": "done", "artifactUri": "/mnt/pvc/x",
    "metrics": {"sizeRatio": 0.31, "qualityBefore": 2.0, "qualityAfter": 2.02, "qualityDrop": 0.01},
    "stages": [{"name": "merge-lora-0", "type": "merge-lora", "phase": "Succeeded", "metrics": {}},
               {"name": "quantize-1", "type": "quantize", "phase": "Succeeded", "metrics": {"sizeBytesAfter": 1000.0}}],
    "qualityGate": {"metric": "perplexity", "before": 2.0, "after": 2.02, "drop": 0.01, "maxDrop": 0.03, "passed": True},
}
PLURALS = {"FineTuneJob": "finetunejobs", "CompressionJob": "compressionjobs", "InferenceService": "inferenceservices"}


# -- the scan -------------------------------------------------------------------------------------

def forms(token: str) -> dict[str, str]:
    """Every spelling of the token worth looking for: itself, and the characters of its base64
    (standard and URL-safe) that depend on the token alone, at each of the three alignments it can
    have inside a larger base64 text (a Secret's data, a base64'd JSON config, a kubeconfig)."""
    raw = token.encode()
    found = {"raw": token}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode().rstrip("=")
        core = encoded[math.ceil(8 * shift / 6): (8 * (shift + len(raw))) // 6]
        found[f"base64@{shift}"] = core
        found[f"base64url@{shift}"] = core.replace("+", "-").replace("/", "_")
    return found


def scan(sources: dict[str, str], token: str) -> list[str]:
    """`where: form` for every source text that holds any form of the token."""
    spelled = forms(token)
    return [f"{where}: {form}" for where, text in sources.items() for form, needle in spelled.items() if needle in text]


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(JSON path, text) of every key and scalar: a finding names the field that holds it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}#key", str(key)
            yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    elif value is not None:
        yield path, str(value)


def namespace_objects(cluster, namespace: str) -> list[dict[str, Any]]:
    """Every object of every listable namespaced kind in the namespace (our kinds, Events, Pods,
    ReplicaSets, EndpointSlices, HPAs, leases… whatever the API server serves), as the API has it."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    assert {"configmaps", "events", "pods", "finetunejobs.llmops.dev"} <= set(kinds), kinds
    listing = json.loads(cluster.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json").stdout)
    seen: set[str] = set()  # an object served by two groups (core Events and events.k8s.io) once, as the first has it
    unique = []
    for obj in listing["items"]:
        uid = obj["metadata"].get("uid") or f'{obj.get("kind")}/{obj["metadata"]["name"]}'
        if uid not in seen:
            seen.add(uid)
            unique.append(obj)
    return unique


def cluster_sources(cluster, namespace: str, planted_secret: str) -> dict[str, str]:
    """field -> text, for every field of every object in the namespace but the planted Secret's own."""
    sources: dict[str, str] = {}
    for obj in namespace_objects(cluster, namespace):
        kind, name = obj.get("kind", "?"), obj["metadata"]["name"]
        if kind == "Secret" and name == planted_secret:
            continue
        for path, text in leaves(obj):
            sources[f"{kind}/{name}{path}"] = text
            # A text that is itself JSON (the runner-config annotation, serve.json, a termination
            # message) is scanned as written and once decoded (escapes such as \u002d undone).
            if text[:1] in "{[":
                try:
                    decoded = json.loads(text)
                except ValueError:
                    continue
                for inner, value in leaves(decoded, path + "<json>"):
                    sources[f"{kind}/{name}{inner}"] = value
    return sources


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Pod, or of the pod template of a Job, Deployment or ReplicaSet."""
    spec = obj.get("spec") or {}
    pod_spec = spec if obj.get("kind") == "Pod" else ((spec.get("template") or {}).get("spec") or {})
    return [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]


# -- the test ---------------------------------------------------------------------------------------

@pytest.fixture
def verbose_operator(cluster, namespace, tmp_path):
    """The operator with --verbose: every reconcile's decision in the log the test scans."""
    proc = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log")
    proc.verbose = True
    proc.start()
    yield proc
    proc.kill(signal.SIGTERM)


def _create(custom, namespace: str, obj: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj)


def _status(custom, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name).get("status") or {}


def _wait(custom, namespace: str, kind: str, name: str, ok, what: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (s := _status(custom, namespace, kind, name)) and ok(s) and s, timeout=timeout, what=f"{kind} {name}: {what}")


def test_a_planted_token_reaches_pods_only_by_reference_and_appears_nowhere_else(cluster, core, custom, namespace, verbose_operator):
    token = f"llmops-planted-{uuid.uuid4().hex}"
    core.create_namespaced_secret(namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
                                              "type": "Opaque", "stringData": {KEY: token}})

    # The chain, every link with the token's Secret: fine-tune (from the hub) -> compress -> serve.
    tuned_report = {"status": "Succeeded", "artifactUri": "file:///output/tuned", "metrics": {"trainLoss": 0.4}}
    _create(custom, namespace, finetunejob(
        "tuned", sim=succeed_with(tuned_report, "2s"),
        baseModel={"uri": "hf://org/tiny-model", "revision": "main", "parameterCount": 125_000_000, "tokenSecretRef": REF}))
    _create(custom, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressionJob", "metadata": {"name": "squeezed"},
        "spec": {"model": {"fineTuneJob": {"name": "tuned"}, "tokenSecretRef": REF},
                 "stages": [{"mergeLora": {}}, {"quantize": {"method": "w4a16", "calibration": {"datasetUri": "file:///data/calib.jsonl"}}}],
                 "output": {"uri": "file:///out/squeezed"}, "resources": H100,
                 "podMetadata": {"annotations": {f"sim.llmops.dev/{k}": v for k, v in succeed_with(COMPRESS_REPORT, "2s").items()}}}})
    _create(custom, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "metadata": {"name": "served"},
        "spec": {"model": {"compressionJob": {"name": "squeezed"}, "tokenSecretRef": REF},
                 "adapters": [{"name": "tuned-adapter", "fineTuneJob": {"name": "tuned"}}],  # the operator calls the replicas' LoRA API
                 "engine": "vllm", "resources": H100}})
    _create(custom, namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "metadata": {"name": "served-cpu"},
        "spec": {"model": {"uri": "hf://org/tiny-model", "revision": "main", "tokenSecretRef": REF},
                 "engine": "transformers", "resources": {"gpus": 0}, "scheduling": ON_A_KWOK_NODE}})

    _wait(custom, namespace, "FineTuneJob", "tuned", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    _wait(custom, namespace, "CompressionJob", "squeezed", lambda s: s.get("phase") == "Succeeded", "Succeeded")
    served = _wait(custom, namespace, "InferenceService", "served",
                   lambda s: s.get("modelUri") and (s.get("readyReplicas") or 0) >= 1 and (s.get("adapters") or [{}])[0].get("uri"),
                   "model resolved, a replica ready, the adapter resolved")
    assert served["modelUri"] == "file:///out/squeezed" and served["phase"] in ("Ready", "Loading", "Degraded"), served
    _wait(custom, namespace, "InferenceService", "served-cpu", lambda s: s.get("phase") == "Ready", "Ready")
    time.sleep(4)  # a few more passes: progress scrapes, adapter loads tried against the (silent) kwok replicas, resyncs

    objects = namespace_objects(cluster, namespace)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    # Positive: every workload that needs the token gets it by reference, the planted Secret and key.
    def token_env(obj: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for c in containers(obj) for e in c.get("env") or [] if e["name"] == TOKEN_ENV]

    wired = {"Job": {"tuned-ftj", "squeezed-cpj"}, "Deployment": {"served-lis", "served-cpu-lis"}}
    for kind, names in wired.items():
        found = {o["metadata"]["name"]: o for o in by_kind.get(kind, [])}
        assert names <= set(found), (kind, sorted(found))
        for name in names:
            assert token_env(found[name]) == [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": REF}}], (kind, name, containers(found[name]))
    pods = [p for p in by_kind.get("Pod", []) if (p["metadata"].get("labels") or {}).get("llmops.dev/name") in ("tuned", "squeezed", "served", "served-cpu")]
    assert {p["metadata"]["labels"]["llmops.dev/name"] for p in pods} == {"tuned", "squeezed", "served", "served-cpu"}, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert token_env(pod) == [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": REF}}], (pod["metadata"]["name"], containers(pod))
    # ... and the runners are told the variable's name, never its value.
    for job in ("tuned-ftj", "squeezed-cpj"):
        template = next(o for o in by_kind["Job"] if o["metadata"]["name"] == job)["spec"]["template"]
        config = json.loads(template["metadata"]["annotations"]["llmops.dev/runner-config"])
        assert config["model"]["tokenEnv"] == TOKEN_ENV, (job, config)
    serve_json = json.loads(next(o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == "served-cpu-lis")["data"]["serve.json"])
    assert serve_json["model"]["tokenEnv"] == TOKEN_ENV, serve_json

    # No container anywhere carries it as a plain env value.
    for obj in objects:
        for c in containers(obj):
            for e in c.get("env") or []:
                assert token not in str(e.get("value", "")), (obj["kind"], obj["metadata"]["name"], e)

    # Negative: nothing the cluster holds (the planted Secret itself aside), nor the operator's log or metrics.
    log = verbose_operator.log_path.read_text(errors="replace")
    assert "DEBUG" in log and "tuned" in log, "the scan needs the verbose log"
    metrics = verbose_operator.metrics()
    sources = {**cluster_sources(cluster, namespace, SECRET), "operator log": log, "operator /metrics": metrics}
    statuses = [k for k in sources if k.split("/", 1)[0] in PLURALS and ".status." in k]
    events = [k for k in sources if k.startswith("Event/") and k.endswith(".message")]
    annotations = [k for k in sources if ".metadata.annotations." in k or ".template.metadata.annotations." in k]
    assert statuses and events and annotations, "the scan must see statuses, events and annotations"
    print(f"scanned {len(sources)} fields of {len(objects)} objects ({', '.join(f'{len(v)} {k}' for k, v in sorted(by_kind.items()))}), "
          f"{len(log.splitlines())} log lines, {len(metrics.splitlines())} metrics lines")
    leaks = scan(sources, token)
    assert not leaks, "the planted token leaked, at:\n" + "\n".join(leaks)

    # The scan can fail: the same scan, after the token is planted where a leak would be.
    blob = base64.b64encode(json.dumps({"auth": {"x": token}}).encode()).decode()  # the token at some alignment inside base64
    core.create_namespaced_config_map(namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "canary", "annotations": {"example.com/leak": f"Bearer {token}"}}, "data": {"config": blob}})
    core.create_namespaced_event(namespace, {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "canary.1"},
                                             "involvedObject": {"kind": "ConfigMap", "name": "canary", "namespace": namespace},
                                             "reason": "Canary", "message": base64.b64encode(token.encode()).decode(), "type": "Normal"})
    caught = scan({**cluster_sources(cluster, namespace, SECRET), "operator log": log + f"\nDEBUG Authorization: Bearer {token}"}, token)
    where = {c.split(": ")[0] for c in caught}
    assert where == {"ConfigMap/canary.metadata.annotations.example.com/leak", "ConfigMap/canary.data.config",
                     "Event/canary.1.message", "operator log"}, caught
    assert any(c.startswith("ConfigMap/canary.data.config: base64") for c in caught), caught
    # ... every alignment of the base64 form is caught, standard and URL-safe.
    for shift in range(3):
        wrapped = base64.b64encode(b"x" * shift + token.encode() + b"y").decode()
        assert scan({"blob": wrapped}, token), shift
        assert scan({"blob": base64.urlsafe_b64encode(b"x" * shift + token.encode()).decode()}, token), shift
    assert scan({"clean": base64.b64encode(b"llmops-planted-" + uuid.uuid4().hex.encode()).decode()}, token) == []
