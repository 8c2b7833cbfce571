"""InferenceService reconciled by the real operator process on the real control plane.

kwok plays the server pods (on the simulated GPU nodes, Running and Ready at once), so these
tests see the Deployment, Service, autoscaler and status logic; the CPU engine serving for real
on the real node, through its Service, is in test_real_serving.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from finetune_helpers import GROUP, VERSION, condition, finetunejob, succeed_with
from finetune_helpers import create as create_finetunejob
from waiting import wait_for

pytestmark = pytest.mark.cluster

PLURAL = "inferenceservices"
GPU = {"gpus": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}


def service(name: str, **spec) -> dict:
    body = {"model": {"uri": "hf://org/model-a"}, "engine": "vllm", "resources": GPU, **spec}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService", "metadata": {"name": name}, "spec": body}


def create(custom, namespace: str, obj: dict, plural: str = PLURAL) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, obj)


def status(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}


def patch_spec(custom, namespace: str, name: str, spec: dict) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def wait_phase(custom, namespace: str, name: str, phase: str, timeout: float = 60, **extra) -> dict:
    def reached():
        s = status(custom, namespace, name)
        return s.get("phase") == phase and all(s.get(k) == v for k, v in extra.items()) and s
    return wait_for(reached, timeout=timeout, what=f"{name} phase {phase} {extra}")


@pytest.fixture
def apps(api_client):
    return client.AppsV1Api(api_client)


def test_becomes_ready_with_its_deployment_and_service_then_scales(custom, core, apps, namespace, operator):
    create(custom, namespace, service("chat", vllm={"maxModelLen": 2048}))
    ready = wait_phase(custom, namespace, "chat", "Ready", readyReplicas=1)
    assert ready["url"] == f"http://chat-lis.{namespace}.svc.cluster.local/v1" and ready["servedModelName"] == "chat"
    assert condition(ready, "Ready")["status"] == "True" and condition(ready, "ModelResolved")["status"] == "True"
    assert condition(ready, "Ready")["observedGeneration"] == 1 and ready["scaler"] == "None"
    deployment = apps.read_namespaced_deployment("chat-lis", namespace)
    container = deployment.spec.template.spec.containers[0]
    assert container.args[:1] == ["org/model-a"] and "--max-model-len" in container.args
    assert container.startup_probe.failure_threshold * container.startup_probe.period_seconds >= 1800
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0
    svc = core.read_namespaced_service("chat-lis", namespace)
    assert svc.spec.ports[0].port == 80 and svc.spec.ports[0].target_port == "http"
    assert svc.spec.selector == deployment.spec.selector.match_labels

    patch_spec(custom, namespace, "chat", {"replicas": 3})
    scaled = wait_phase(custom, namespace, "chat", "Ready", readyReplicas=3, replicas=3)
    assert scaled["observedGeneration"] == 2


def test_a_model_change_rolls_out_without_ready_replicas_reaching_zero(custom, apps, namespace, operator):
    create(custom, namespace, service("roll", replicas=2))
    wait_phase(custom, namespace, "roll", "Ready", readyReplicas=2)
    lowest, stop = [2], threading.Event()

    def watch_ready():  # polled all through the rollout, not sampled at the end
        while not stop.is_set():
            lowest[0] = min(lowest[0], apps.read_namespaced_deployment("roll-lis", namespace).status.ready_replicas or 0)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_ready)
    watcher.start()
    try:
        patch_spec(custom, namespace, "roll", {"model": {"uri": "hf://org/model-b"}})
        def rolled():
            d = apps.read_namespaced_deployment("roll-lis", namespace)
            return (d.spec.template.spec.containers[0].args[0] == "org/model-b" and d.status.updated_replicas == 2
                    and d.status.ready_replicas == 2 and (d.status.replicas or 0) == 2)
        wait_for(rolled, timeout=90, what="the rollout to model-b")
        wait_phase(custom, namespace, "roll", "Ready", observedGeneration=2)
    finally:
        stop.set()
        watcher.join()
    assert lowest[0] >= 2, f"ready replicas fell to {lowest[0]} during the rollout"


def test_a_compressionjob_that_failed_its_gate_is_refused(custom, core, apps, namespace, operator):
    cpj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressionJob", "metadata": {"name": "small"},
           "spec": {"model": {"fineTuneJob": {"name": "never"}}, "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}],
                    "output": {"uri": "file:///out/small"}}}
    create(custom, namespace, cpj, "compressionjobs")
    gate = {"metric": "perplexity", "before": 2.0, "after": 3.1, "drop": 0.55, "maxDrop": 0.05, "passed": False}
    # What the operator writes when the runner reports a failed gate (test_compression_operator.py shows it does).
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "compressionjobs", "small", {"status": {
        "phase": "Failed", "message": "quality gate failed", "qualityGate": gate, "artifactUri": "file:///out/small"}})
    create(custom, namespace, service("gated", model={"compressionJob": {"name": "small"}}))
    failed = wait_phase(custom, namespace, "gated", "Failed")
    assert condition(failed, "Ready")["reason"] == "QualityGateFailed" and "never served" in failed["message"]
    assert "55.00%" in failed["message"]
    assert apps.list_namespaced_deployment(namespace).items == []
    wait_for(lambda: [e for e in core.list_namespaced_event(namespace).items
                      if e.involved_object.name == "gated" and e.reason == "QualityGateFailed"], what="a QualityGateFailed event")


def test_waits_for_a_finetunejob_adapter_then_resolves_it(custom, namespace, operator):
    create(custom, namespace, service("tuned", adapters=[{"name": "support", "fineTuneJob": {"name": "ft"}}]))
    pending = wait_for(lambda: (status(custom, namespace, "tuned").get("adapters") or [None])[0], what="adapter status")
    assert pending["state"] == "Pending" and "FineTuneJob ft does not exist" in pending["message"]
    report = {"status": "Succeeded", "artifactUri": "file:///output/ft", "metrics": {"trainLoss": 0.4}}
    create_finetunejob(custom, namespace, finetunejob("ft", sim=succeed_with(report, "2s")))
    resolved = wait_for(lambda: (a := status(custom, namespace, "tuned")["adapters"][0]).get("uri") and a,
                        timeout=60, what="the adapter resolved from the FineTuneJob")
    assert resolved["uri"] == "file:///output/ft" and resolved["source"] == "finetunejob/ft"
    # kwok's pods do not answer HTTP: the adapter stays Loading, and says why, instead of Loaded.
    assert resolved["state"] in ("Loading", "Failed")


KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {"group": "keda.sh", "scope": "Namespaced",
             "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def test_hpa_without_keda_and_a_scaledobject_once_kedas_crd_is_installed(api_client, custom, namespace, operator):
    autoscaling = client.AutoscalingV2Api(api_client)
    scaling = {"minReplicas": 1, "maxReplicas": 4, "metric": "kv-cache-utilization", "target": 0.7}
    create(custom, namespace, service("auto", autoscaling=scaling))
    wait_for(lambda: status(custom, namespace, "auto").get("scaler") == "HPA", what="scaler HPA")
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("auto-lis", namespace)
    assert hpa.spec.max_replicas == 4 and hpa.spec.metrics[0].pods.metric.name == "vllm_kv_cache_usage_perc"

    extensions = client.ApiextensionsV1Api(api_client)
    extensions.create_custom_resource_definition(KEDA_CRD)
    try:
        wait_for(lambda: any(r.name == "scaledobjects" for r in client.CustomObjectsApi(api_client).get_api_resources("keda.sh", "v1alpha1").resources)
                 if _served(api_client) else False, timeout=30, what="KEDA's CRD served")
        time.sleep(16)  # the operator asks discovery again after 15 s
        patch_spec(custom, namespace, "auto", {"autoscaling": {**scaling, "target": 0.8}})
        wait_for(lambda: status(custom, namespace, "auto").get("scaler") == "KEDA", timeout=30, what="scaler KEDA")
        def scaled_object():
            found = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "auto-lis")
            return found["spec"]["triggers"][0]["metadata"]["threshold"] == "0.8" and found
        scaled = wait_for(scaled_object, timeout=30, what="the ScaledObject with the new target")
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["type"] == "prometheus" and "vllm:kv_cache_usage_perc" in trigger["metadata"]["query"]
        assert scaled["spec"]["scaleTargetRef"]["name"] == "auto-lis" and scaled["spec"]["maxReplicaCount"] == 4
        wait_for(lambda: not autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items, what="the HPA deleted")
    finally:
        extensions.delete_custom_resource_definition("scaledobjects.keda.sh")


def _served(api_client) -> bool:
    try:
        client.CustomObjectsApi(api_client).get_api_resources("keda.sh", "v1alpha1")
        return True
    except client.exceptions.ApiException:
        return False
