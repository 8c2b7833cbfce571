"""The CPU engine serving for real on the real node, through its Service, with the official client.

An InferenceService (engine: transformers) serves the tiny Llama from a claim. A client in the
node's network (where the Service's ClusterIP answers) lists models, completes, chats, streams,
sends bad requests and 64 concurrent ones; adapters added to the spec are loaded live (the same
pod, no restart) and removed ones disappear; one adapter comes from a real FineTuneJob that the
service waits for. Nothing here is simulated.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
from finetune_helpers import GROUP, VERSION, finetunejob
from finetune_helpers import create as create_finetunejob
from real_workloads import claim, describe, upload
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers
CLIENT = Path(__file__).with_name("openai_client.py")
CPU = {"gpus": 0, "cpu": "1", "memory": "2Gi"}

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def images(node_images):
    return node_images("serve", "finetune")


def isvc_status(custom, namespace: str, name: str = "tiny") -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "inferenceservices", name).get("status") or {}


def patch_spec(custom, namespace: str, spec: dict, name: str = "tiny") -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "inferenceservices", name, {"spec": spec})


def adapter_states(custom, namespace: str) -> dict[str, str]:
    return {a["name"]: a["state"] for a in isvc_status(custom, namespace).get("adapters") or []}


def server_pods(core, namespace: str) -> list:
    return [p for p in core.list_namespaced_pod(namespace, label_selector="llmops.dev/kind=inferenceservice").items
            if not p.metadata.deletion_timestamp]


def test_the_cpu_engine_serves_through_its_service_and_loads_adapters_live(images, cluster, custom, core, namespace, operator, tmp_path):
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_lora_adapter, make_tiny_model

    model = make_tiny_model(tmp_path / "model", corpus_texts())
    claim(core, namespace, "inputs")
    upload(cluster, core, namespace, "inputs", {
        "model": model,
        "support": make_lora_adapter(model, tmp_path / "support", seed=1, scale=0.5),
        "train.jsonl": write_jsonl(tmp_path / "train.jsonl", instruction_examples()[0]),
    })
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "inferenceservices", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "metadata": {"name": "tiny"},
        "spec": {"model": {"uri": "pvc://inputs/model"}, "engine": "transformers", "resources": CPU,
                 "adapters": [], "startupTimeoutSeconds": 300},
    })
    ready = wait_for(lambda: (s := isvc_status(custom, namespace)).get("phase") == "Ready" and s, timeout=300,
                     what="the service Ready", on_timeout=lambda: describe(core, namespace, "tiny", []))
    url = f"http://{core.read_namespaced_service('tiny-lis', namespace).spec.cluster_ip}/v1"
    assert ready["url"] == f"http://tiny-lis.{namespace}.svc.cluster.local/v1" and ready["readyReplicas"] == 1
    (pod,) = server_pods(core, namespace)
    uid = pod.metadata.uid

    def server_logs() -> str:
        out = []
        for p in server_pods(core, namespace):
            for previous in (False, True):
                got = cluster.kubectl("logs", "-n", namespace, p.metadata.name, *(["--previous"] if previous else []), check=False)
                out.append(f"--- {p.metadata.name} previous={previous}:\n{(got.stdout or got.stderr)[-2000:]}")
        return "\n".join(out)

    def client(action: str, model: str = "tiny") -> dict:
        done = cluster.node.exec_in_netns([sys.executable, str(CLIENT), url, action, model], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-1500:] + "\n" + describe(core, namespace, "tiny", []) + server_logs()
        return json.loads(done.stdout)

    assert client("models")["models"] == ["tiny"]
    completion = client("complete")
    assert completion["completion_tokens"] > 0 and completion["text"]
    chat = client("chat")
    assert chat["role"] == "assistant" and chat["text"]
    assert client("stream")["chunks"] > 1  # server-sent events, token by token

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8000/metrics", timeout=10) as reply:
            lines = [l for l in reply.read().decode().splitlines() if l.startswith(name) and not l.startswith("#")]
        return sum(float(l.rsplit(" ", 1)[1]) for l in lines)

    generated = metric("vllm:generation_tokens_total")
    assert generated > 0 and metric("vllm:e2e_request_latency_seconds_count") >= 3

    bad = client("bad")
    for case, reply in bad.items():
        assert 400 <= reply["status"] < 500 and reply["error"] and reply["error"].get("message"), (case, reply)
    burst = client("concurrent")
    assert burst["ok"] == 64, burst["errors"]
    assert metric("vllm:generation_tokens_total") >= generated + 64  # the metrics moved with the requests

    # An adapter added to the spec is loaded on the running replica: same pod, no restart.
    patch_spec(custom, namespace, {"adapters": [{"name": "support", "uri": "pvc://inputs/support"},
                                                {"name": "tuned", "fineTuneJob": {"name": "ft"}}]})
    wait_for(lambda: adapter_states(custom, namespace).get("support") == "Loaded", timeout=120, what="adapter support Loaded")
    assert adapter_states(custom, namespace)["tuned"] == "Pending"  # its FineTuneJob does not exist yet
    assert client("models")["models"] == ["support", "tiny"]
    assert client("complete", "support")["text"] != completion["text"]  # the adapter changes the answer
    # The adapter from a real FineTuneJob: waited for, then loaded live when it succeeds (its output
    # is on the claim the replica mounts already; one on a new claim would need the mount: a rollout).
    create_finetunejob(custom, namespace, finetunejob(
        "ft", baseModel={"uri": "pvc://inputs/model"}, dataset={"uri": "pvc://inputs/train.jsonl"}, method="lora",
        resources={"gpusPerNode": 0, "cpu": "1", "memory": "3Gi"}, output={"uri": "pvc://inputs/ft"},
        training={"maxSteps": 20, "perDeviceBatchSize": 8, "maxSeqLength": 64}, backoffLimit=0))
    wait_for(lambda: adapter_states(custom, namespace).get("tuned") == "Loaded", timeout=600, what="adapter tuned Loaded",
             on_timeout=lambda: describe(core, namespace, "ft", []))
    assert client("models")["models"] == ["support", "tiny", "tuned"]
    assert client("complete", "tuned")["completion_tokens"] > 0
    assert isvc_status(custom, namespace)["phase"] == "Ready"

    # Removed from the spec: unloaded, still the same pod.
    patch_spec(custom, namespace, {"adapters": [{"name": "tuned", "fineTuneJob": {"name": "ft"}}]})
    wait_for(lambda: set(adapter_states(custom, namespace)) == {"tuned"}, timeout=60, what="support gone from status")
    wait_for(lambda: client("models")["models"] == ["tiny", "tuned"], timeout=60, what="support unloaded")
    (same,) = server_pods(core, namespace)
    assert same.metadata.uid == uid and same.status.container_statuses[0].restart_count == 0

    # A replica that restarts starts with the adapters of the moment (the ConfigMap, then the operator).
    core.delete_namespaced_pod(same.metadata.name, namespace)
    wait_for(lambda: (p := server_pods(core, namespace)) and p[0].metadata.uid != uid and isvc_status(custom, namespace)["phase"] == "Ready"
             and adapter_states(custom, namespace) == {"tuned": "Loaded"}, timeout=300, what="a new replica serving tuned")
    assert client("models")["models"] == ["tiny", "tuned"]
