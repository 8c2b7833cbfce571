"""CompressionJob reconciled by the real operator process on the real control plane.

kwok plays the pods (GPU stages, so they land on the simulated GPU nodes): annotations say how
each pod ends and what its termination message reports. The real chain on the real node is in
test_real_compression.py.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from finetune_helpers import GROUP, VERSION, condition, finetunejob, succeed_with
from finetune_helpers import create as create_finetunejob
from waiting import wait_for

pytestmark = pytest.mark.cluster

PLURAL = "compressionjobs"
GPU = {"gpus": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}
W4A16 = {"quantize": {"method": "w4a16", "calibration": {"datasetUri": "file:///data/calib.jsonl"}}}


def compressionjob(name: str, sim: dict[str, str] | None = None, **spec) -> dict:
    body = {"model": {"uri": "file:///models/m"}, "stages": [W4A16], "output": {"uri": f"file:///out/{name}"}, "resources": GPU, **spec}
    if sim:
        body["podMetadata"] = {"annotations": {f"sim.llmops.dev/{k}": v for k, v in sim.items()}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressionJob", "metadata": {"name": name}, "spec": body}


def create(custom, namespace: str, obj: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)


def status(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}


def wait_phase(custom, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (s := status(custom, namespace, name)).get("phase") == phase and s, timeout=timeout, what=f"{name} phase {phase}")


def events(core, namespace: str, name: str) -> list:
    return [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name and e.involved_object.kind == "CompressionJob"]


REPORT = {
    "status": "Succeeded", "reason": "Completed", "message": "done", "artifactUri": "/mnt/pvc/x",
    "metrics": {"sizeRatio": 0.31, "qualityBefore": 2.0, "qualityAfter": 2.02, "qualityDrop": 0.01},
    "stages": [{"name": "quantize-0", "type": "quantize", "phase": "Succeeded", "metrics": {"sizeBytesAfter": 1000.0}}],
    "qualityGate": {"metric": "perplexity", "before": 2.0, "after": 2.02, "drop": 0.01, "maxDrop": 0.02, "passed": True},
}


def test_waits_for_its_finetunejob_then_compresses_its_output(custom, core, batch, namespace, operator):
    create(custom, namespace, compressionjob("small", succeed_with(REPORT), model={"fineTuneJob": {"name": "tuned"}}))
    waiting = wait_for(lambda: condition(status(custom, namespace, "small"), "WaitingForInput"), what="WaitingForInput")
    assert waiting["status"] == "True" and "FineTuneJob tuned does not exist" in waiting["message"]

    ft_report = {"status": "Succeeded", "artifactUri": "file:///output/tuned", "metrics": {"trainLoss": 0.4}}
    create_finetunejob(custom, namespace, finetunejob("tuned", sim=succeed_with(ft_report, "4s")))
    wait_for(lambda: "to succeed" in (condition(status(custom, namespace, "small"), "WaitingForInput") or {}).get("message", ""),
             what="the CompressionJob to name the running FineTuneJob")
    assert batch.list_namespaced_job(namespace, label_selector="llmops.dev/kind=compressionjob").items == []  # nothing runs yet

    done = wait_phase(custom, namespace, "small", "Succeeded", timeout=90)
    assert done["inputUri"] == "file:///output/tuned" and done["artifactUri"] == "file:///out/small"
    assert condition(done, "WaitingForInput")["status"] == "False"
    assert done["stages"] == [{"name": "quantize-0", "phase": "Succeeded", "metrics": {"sizeBytesAfter": 1000.0}}]
    assert done["metrics"]["sizeRatio"] == 0.31 and done["qualityGate"]["passed"] is True and done["progress"] == "1/1"
    assert (done["attempt"], done["restarts"]) == (0, 0)  # kept: the schema has them (it once pruned them)
    job = batch.read_namespaced_job("small-cpj", namespace)
    config = json.loads(job.spec.template.metadata.annotations["llmops.dev/runner-config"])
    assert config["model"]["path"] == "/output/tuned" and config["model"]["basePath"] == "/models/tiny"  # the FineTuneJob's base
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1" and container.image.endswith("runner-compress:0.1.0")

    # Once finished it is written no more: a status field its schema lacked (attempt, restarts) was
    # pruned by the API server, and the operator patched it again ~30 times a second.
    def status_writes() -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in operator.metrics().splitlines()
                   if line.startswith("llmops_api_writes_total{") and 'resource="compressionjobs"' in line)
    before = status_writes()
    time.sleep(3)
    assert status_writes() == before


def test_a_failed_finetunejob_fails_the_compressionjob_naming_it(custom, core, namespace, operator):
    create(custom, namespace, compressionjob("never", model={"fineTuneJob": {"name": "broken"}}))
    fail = {"outcome": "fail", "exit-code": "2", "duration": "2s",
            "message": json.dumps({"status": "Failed", "reason": "InvalidInput", "message": "Dataset record 2 is not JSON."})}
    create_finetunejob(custom, namespace, finetunejob("broken", sim=fail))
    failed = wait_phase(custom, namespace, "never", "Failed", timeout=60)
    reason = condition(failed, "Failed")
    assert reason["reason"] == "InputFailed" and "FineTuneJob broken failed" in reason["message"] and "record 2" in reason["message"]
    wait_for(lambda: any(e.reason == "InputFailed" and e.type == "Warning" for e in events(core, namespace, "never")), what="a Warning event")


def test_a_failed_quality_gate_fails_once_with_both_numbers(custom, core, namespace, operator):
    gate = {**REPORT["qualityGate"], "after": 9.5, "drop": 3.75, "passed": False}
    message = "quality gate failed: perplexity went from 2 to 9.5, a drop of 375.00%, more than maxAccuracyDrop 2.00%"
    report = {**REPORT, "status": "Failed", "reason": "QualityGateFailed", "message": message, "qualityGate": gate}
    create(custom, namespace, compressionjob("gated", {"outcome": "fail", "exit-code": "2", "duration": "1s", "message": json.dumps(report)}, backoffLimit=3))
    failed = wait_phase(custom, namespace, "gated", "Failed")
    reason = condition(failed, "Failed")
    assert reason["reason"] == "QualityGateFailed" and "from 2 to 9.5" in reason["message"]
    assert failed["qualityGate"]["passed"] is False and failed["qualityGate"]["after"] == 9.5
    assert failed.get("restarts", 0) == 0 and "artifactUri" not in failed
    assert len(core.list_namespaced_pod(namespace, label_selector="llmops.dev/name=gated").items) == 1  # no retry


@pytest.mark.parametrize(("stages", "field", "words"), [
    ([W4A16, {"prune": {"method": "magnitude"}}], "spec.stages", "quantize must be the last stage"),
    ([{"prune": {"method": "magnitude"}}, {"mergeLora": {}}], "spec.stages", "mergeLora must be the first stage"),
    ([{"quantize": {"method": "gptq"}}], "spec.stages[0].quantize.calibration", "calibrate on data"),
])
def test_chains_that_cannot_run_are_refused_by_the_api_server_naming_the_field(custom, namespace, stages, field, words):
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, compressionjob("bad", stages=stages))
    body = json.loads(refused.value.body)
    assert refused.value.status == 422 and any(c.get("field") == field and words in c.get("message", "") for c in body["details"]["causes"]), body
