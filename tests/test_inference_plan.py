"""The InferenceService builders, the live-adapter pass and the pure reconcile plan, without a cluster."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

from llmops.controllers.inference import inputs
from llmops.controllers.inference.adapters import ReplicaAdapters, ServerSaidNo, sync_replica
from llmops.controllers.inference.plan import Observed, plan
from llmops.runtime.conditions import find
from llmops.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings()
GPU_SPEC = {"model": {"uri": "hf://org/model", "revision": "abc123", "tokenSecretRef": {"name": "hub", "key": "token"}},
            "engine": "vllm", "resources": {"gpus": 2}, "vllm": {"tensorParallelSize": 2, "maxModelLen": 4096, "extraArgs": ["--seed", "7"]}}
CPU_SPEC = {"model": {"uri": "pvc://models/tiny"}, "engine": "transformers", "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"}}


def body(spec=None, status=None, name="svc"):
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-s", "generation": 3},
            "spec": copy.deepcopy(spec or CPU_SPEC), "status": status or {}}


def observed(b, **kw):
    return Observed(b, NOW, **kw)


def kinds(p):
    return {c["kind"]: c for c in p.apply}


def container(p):
    return kinds(p)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def job(kind, phase, artifact="pvc://models/out", method=None, gate=None, stages=None):
    status = {"phase": phase, "message": f"it is {phase}"}
    if kind == "FineTuneJob" and phase == "Succeeded":
        status["result"] = {"artifactUri": artifact}
    if kind == "CompressionJob" and phase == "Succeeded":
        status["artifactUri"] = artifact
    if method:
        status["selectedMethod"] = method
    if gate:
        status["qualityGate"] = gate
    return {"kind": kind, "spec": {"stages": stages or []}, "status": status}


# -- builders ------------------------------------------------------------------------------------

def test_vllm_args_carry_model_parallelism_length_revision_and_extra_args_last():
    c = container(plan(observed(body(GPU_SPEC)), SETTINGS))
    args = c["args"]
    assert args[0] == "org/model"  # a hub id: vLLM downloads it
    pairs = dict(zip(args, args[1:]))
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--max-model-len"] == "4096"
    assert pairs["--revision"] == "abc123" and pairs["--served-model-name"] == "svc" and pairs["--port"] == "8000"
    assert "--enable-prefix-caching" in args and "--quantization" not in args
    assert args[-2:] == ["--seed", "7"]
    assert "--enable-lora" not in args  # no adapters asked for: LoRA stays off
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    pod = kinds(plan(observed(body(GPU_SPEC)), SETTINGS))["Deployment"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_the_hub_token_comes_from_the_secret_by_reference_only():
    p = plan(observed(body(GPU_SPEC)), SETTINGS)
    token = next(e for e in container(p)["env"] if e["name"] == "HF_TOKEN")
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    assert "value" not in token
    assert "token" not in json.dumps(kinds(p)["ConfigMap"]["data"]).replace("tokenEnv", "")


def test_probes_give_loading_its_whole_budget_and_shm_is_sized_for_tensor_parallelism():
    spec = {**GPU_SPEC, "startupTimeoutSeconds": 3600}
    p = plan(observed(body(spec)), SETTINGS)
    c = container(p)
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 3600
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] < 3600  # short once up
    assert c["readinessProbe"]["httpGet"]["port"] == "http"
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0  # endpoints drop the replica before it stops listening
    volumes = {v["name"]: v for v in kinds(p)["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}  # 8Gi per tensor-parallel GPU
    cpu = kinds(plan(observed(body()), SETTINGS))["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in cpu if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "1Gi"


def test_a_compressed_tensors_input_sets_the_quantization_and_onnx_is_refused_by_vllm():
    spec = {**GPU_SPEC, "model": {"compressionJob": {"name": "small"}}}
    w8a8 = job("CompressionJob", "Succeeded", stages=[{"quantize": {"method": "w8a8-int8"}}], gate={"passed": True})
    args = container(plan(observed(body(spec), model_job=w8a8), SETTINGS))["args"]
    assert dict(zip(args, args[1:]))["--quantization"] == "compressed-tensors"
    assert args[0] == "/mnt/pvc/models/out"
    onnx = job("CompressionJob", "Succeeded", stages=[{"quantize": {"method": "onnx-dynamic-int8"}}], gate={"passed": True})
    p = plan(observed(body(spec), model_job=onnx), SETTINGS)
    assert p.status["phase"] == "Failed" and find(p.status["conditions"], "Ready")["reason"] == "UnsupportedModel"
    assert not p.apply
    served = plan(observed(body({**CPU_SPEC, "model": {"compressionJob": {"name": "small"}}}), model_job=onnx), SETTINGS)
    assert served.status["modelFormat"] == "onnx" and kinds(served)["Deployment"]


def test_adapters_turn_lora_on_and_start_from_the_configmap_so_adding_one_rolls_nothing():
    spec = {**GPU_SPEC, "adapters": [{"name": "support", "uri": "pvc://models/adapters/support"}]}
    p = plan(observed(body(spec)), SETTINGS)
    c = container(p)
    assert "--enable-lora" in c["args"] and dict(zip(c["args"], c["args"][1:]))["--max-loras"] == "4"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]
    assert kinds(p)["ConfigMap"]["data"]["lora-modules"] == "--lora-modules support=/mnt/pvc/models/adapters/support"
    assert "support" not in json.dumps(c["args"])
    more = {**spec, "adapters": spec["adapters"] + [{"name": "legal", "uri": "pvc://models/adapters/legal"}]}
    again = plan(observed(body(more)), SETTINGS)
    assert kinds(again)["Deployment"] == kinds(p)["Deployment"]  # same template: no rollout
    assert "legal=/mnt/pvc/models/adapters/legal" in kinds(again)["ConfigMap"]["data"]["lora-modules"]
    other_model = plan(observed(body({**spec, "model": {"uri": "hf://org/other"}})), SETTINGS)
    assert kinds(other_model)["Deployment"]["spec"]["template"] != kinds(p)["Deployment"]["spec"]["template"]


def test_the_cpu_engine_runs_the_serving_runner_non_root_with_its_config_in_the_configmap():
    p = plan(observed(body({**CPU_SPEC, "adapters": [{"name": "a", "uri": "pvc://models/a"}]})), SETTINGS)
    c = container(p)
    assert c["command"] == ["python", "-m", "llmops_runners.serve"] and c["args"] == ["--config", "/etc/llmops/serve.json"]
    assert c["image"] == SETTINGS.serve_image and c["securityContext"]["readOnlyRootFilesystem"] is True
    config = json.loads(kinds(p)["ConfigMap"]["data"]["serve.json"])
    assert config["model"]["path"] == "/mnt/pvc/models/tiny" and config["servedModelName"] == "svc"
    assert config["adapters"] == [{"name": "a", "path": "/mnt/pvc/models/a"}]
    deployment = kinds(p)["Deployment"]["spec"]
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert deployment["replicas"] == 1
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True
    annotations = deployment["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000" and annotations["prometheus.io/scrape"] == "true"
    assert kinds(p)["Service"]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert p.status["url"] == "http://svc-lis.ns.svc.cluster.local/v1"


def test_autoscaling_makes_an_hpa_without_keda_and_a_scaledobject_with_it():
    spec = {**CPU_SPEC, "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "metric": "waiting-requests", "target": 5}}
    hpa = plan(observed(body(spec)), SETTINGS)
    assert "replicas" not in kinds(hpa)["Deployment"]["spec"]  # the autoscaler owns it
    metric = kinds(hpa)["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]
    assert metric == {"metric": {"name": "vllm_num_requests_waiting"}, "target": {"type": "AverageValue", "averageValue": "5"}}
    assert hpa.status["scaler"] == "HPA" and "ScaledObject" not in kinds(hpa)
    keda = plan(observed(body(spec, status={"scaler": "HPA"}), keda=True), SETTINGS)
    trigger = kinds(keda)["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "5"
    assert 'vllm:num_requests_waiting{namespace="ns",model_name="svc"}' in trigger["metadata"]["query"]
    assert keda.status["scaler"] == "KEDA" and ("HorizontalPodAutoscaler", "svc-lis") in keda.delete
    fixed = plan(observed(body(CPU_SPEC, status={"scaler": "KEDA"})), SETTINGS)
    assert fixed.status["scaler"] == "None" and ("ScaledObject", "svc-lis") in fixed.delete


# -- model sources -------------------------------------------------------------------------------

def test_waits_for_a_finetunejob_naming_it_and_builds_nothing():
    spec = {**CPU_SPEC, "model": {"fineTuneJob": {"name": "ft"}}}
    for seen, reason in ((None, "InputNotFound"), (job("FineTuneJob", "Running", method="full"), "InputNotReady")):
        p = plan(observed(body(spec), model_job=seen), SETTINGS)
        waiting = find(p.status["conditions"], "WaitingForModel")
        assert waiting["status"] == "True" and waiting["reason"] == reason and "FineTuneJob ft" in waiting["message"]
        assert p.status["phase"] == "Pending" and not p.apply
    done = plan(observed(body(spec), model_job=job("FineTuneJob", "Succeeded", method="full")), SETTINGS)
    assert find(done.status["conditions"], "WaitingForModel")["status"] == "False"
    assert done.status["modelUri"] == "pvc://models/out" and kinds(done)["Deployment"]


def test_a_compressionjob_that_failed_its_gate_is_never_served():
    spec = {**CPU_SPEC, "model": {"compressionJob": {"name": "small"}}}
    gate = {"metric": "perplexity", "drop": 0.31, "maxDrop": 0.05, "passed": False}
    p = plan(observed(body(spec), model_job=job("CompressionJob", "Failed", gate=gate)), SETTINGS)
    ready = find(p.status["conditions"], "Ready")
    assert p.status["phase"] == "Failed" and ready["reason"] == "QualityGateFailed"
    assert "31.00%" in ready["message"] and "5.00%" in ready["message"]
    assert not p.apply and ("Warning", "QualityGateFailed", ready["message"]) in p.events
    other = plan(observed(body(spec), model_job=job("CompressionJob", "Failed")), SETTINGS)
    assert find(other.status["conditions"], "Ready")["reason"] == "InputFailed" and "it is Failed" in other.status["message"]


def test_a_lora_finetunejob_is_an_adapter_not_a_model_and_a_resolved_model_outlives_its_job():
    spec = {**CPU_SPEC, "model": {"fineTuneJob": {"name": "ft"}}}
    p = plan(observed(body(spec), model_job=job("FineTuneJob", "Succeeded", method="lora")), SETTINGS)
    assert find(p.status["conditions"], "Ready")["reason"] == "NotAModel" and "spec.adapters" in p.status["message"]
    first = plan(observed(body(spec), model_job=job("FineTuneJob", "Succeeded", method="full")), SETTINGS)
    later = plan(observed(body(spec, status=first.status), model_job=None), SETTINGS)  # the job was deleted
    assert later.status["modelUri"] == "pvc://models/out" and kinds(later)["Deployment"]


def test_inputs_name_the_model_job_and_each_adapter_job():
    b = body({**CPU_SPEC, "model": {"compressionJob": {"name": "small"}},
              "adapters": [{"name": "a", "fineTuneJob": {"name": "ft"}}, {"name": "b", "uri": "pvc://m/b"}]})
    assert inputs(b) == [("CompressionJob", "ns", "small"), ("FineTuneJob", "ns", "ft")]


# -- serving status ----------------------------------------------------------------------------------

def deployment(ready, replicas=1, updated=None, generation=1, observed_generation=1, conditions=()):
    return {"metadata": {"name": "svc-lis", "generation": generation}, "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "replicas": replicas, "updatedReplicas": replicas if updated is None else updated,
                       "observedGeneration": observed_generation, "conditions": list(conditions)}}


def test_phases_follow_the_replicas_and_the_rollout():
    loading = plan(observed(body(), deployment=deployment(0)), SETTINGS)
    assert loading.status["phase"] == "Loading" and find(loading.status["conditions"], "Ready")["status"] == "False"
    ready = plan(observed(body({**CPU_SPEC, "replicas": 2}), deployment=deployment(2, replicas=2)), SETTINGS)
    assert ready.status["phase"] == "Ready" and ready.status["readyReplicas"] == 2
    assert find(ready.status["conditions"], "Progressing")["reason"] == "RolloutComplete"
    assert ("Normal", "Ready", ready.status["message"]) in ready.events
    rolling = plan(observed(body(), deployment=deployment(1, updated=0, generation=2, observed_generation=2)), SETTINGS)
    assert find(rolling.status["conditions"], "Progressing")["status"] == "True"
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "took too long"}
    pods = [{"metadata": {"name": "svc-lis-x"}, "status": {"containerStatuses": [
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}}]
    degraded = plan(observed(body(), deployment=deployment(0, conditions=[stuck]), pods=pods), SETTINGS)
    assert degraded.status["phase"] == "Degraded" and "ImagePullBackOff" in degraded.status["message"]


def test_adapter_states_come_from_what_every_ready_replica_serves():
    spec = {**CPU_SPEC, "adapters": [{"name": "a", "uri": "pvc://m/a"}, {"name": "b", "uri": "pvc://m/b"},
                                     {"name": "c", "fineTuneJob": {"name": "ft"}}]}
    replicas = [ReplicaAdapters("p1", loaded={"a", "b"}), ReplicaAdapters("p2", loaded={"a"}, failed={"b": "p2: no such folder"})]
    p = plan(observed(body(spec), deployment=deployment(2, replicas=1), replicas=replicas,
                      adapter_jobs={"c": job("FineTuneJob", "Running", method="lora")}), SETTINGS)
    states = {a["name"]: a for a in p.status["adapters"]}
    assert states["a"]["state"] == "Loaded"
    assert states["b"]["state"] == "Failed" and states["b"]["message"] == "p2: no such folder"
    assert states["c"]["state"] == "Pending" and "FineTuneJob ft" in states["c"]["message"]
    assert p.status["phase"] == "Degraded"
    trained = plan(observed(body(spec), deployment=deployment(1), replicas=[ReplicaAdapters("p1", loaded={"a", "b"})],
                            adapter_jobs={"c": job("FineTuneJob", "Succeeded", artifact="pvc://m/c", method="lora")}), SETTINGS)
    c = {a["name"]: a for a in trained.status["adapters"]}["c"]
    assert c["state"] == "Loading" and c["uri"] == "pvc://m/c"  # resolved; not yet on the replica


def test_sync_replica_loads_the_missing_unloads_the_extra_and_keeps_the_servers_words():
    calls = []

    def call(method, url, body, timeout):
        calls.append((method, url.rsplit("/", 1)[-1], body))
        if url.endswith("/v1/models"):
            return {"data": [{"id": "base"}, {"id": "old", "parent": "base"}, {"id": "keep", "parent": "base"}]}
        if body and body.get("lora_name") == "bad":
            raise ServerSaidNo("No adapter found at /nowhere")
        return "Success"

    out = sync_replica("p1", "10.0.0.1", "base", {"keep": "/k", "new": "/n", "bad": "/nowhere"}, 5, call)
    assert ("POST", "unload_lora_adapter", {"lora_name": "old"}) in calls
    assert ("POST", "load_lora_adapter", {"lora_name": "new", "lora_path": "/n"}) in calls
    assert not any(c[2] and c[2].get("lora_name") == "keep" for c in calls)  # already there: left alone
    assert out.loaded == {"keep", "new"} and out.failed == {"bad": "p1: No adapter found at /nowhere"}
    down = sync_replica("p2", "10.0.0.2", "base", {"a": "/a"}, 5, lambda *a: (_ for _ in ()).throw(OSError("refused")))
    assert down.unreachable and "refused" in down.unreachable and not down.loaded


def test_an_adapter_on_a_claim_a_replica_does_not_mount_waits_for_the_rollout_instead_of_failing():
    from llmops.controllers.inference import _reachable
    from llmops.runtime.children import Location

    pod = {"spec": {"volumes": [{"name": "pvc-0", "persistentVolumeClaim": {"claimName": "inputs"}}, {"name": "scratch", "emptyDir": {}}]}}
    wanted = {"a": Location("/mnt/pvc/inputs/a", "inputs"), "b": Location("/mnt/pvc/outputs/b", "outputs"), "hub": Location("org/x", hub_id=True)}
    assert _reachable(pod, wanted) == {"a": "/mnt/pvc/inputs/a", "hub": "org/x"}


def test_something_else_answering_on_the_port_is_unreachable_not_a_crash():
    # A simulated pod's fake IP can land on another server (an operator's own metrics page).
    out = sync_replica("p", "127.1.0.5", "base", {"a": "/a"}, 5, lambda *a: "# HELP llmops_reconciles_total ...")
    assert out.unreachable and "not an OpenAI" in out.unreachable and not out.loaded


def test_the_cache_keeps_the_claims_a_pod_mounts():
    from llmops.runtime.cache import slim

    pod = {"kind": "Pod", "metadata": {"name": "p", "managedFields": [{}]},
           "spec": {"nodeName": "n", "containers": [{"name": "c"}], "volumes": [
               {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "outputs", "readOnly": True}}, {"name": "tmp", "emptyDir": {}}]}}
    assert slim(pod)["spec"] == {"nodeName": "n", "volumes": [{"name": "pvc-0", "persistentVolumeClaim": {"claimName": "outputs"}}]}
