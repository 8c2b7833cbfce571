"""A broken chain, end to end through the operator: a failing fine-tune leaves the CompressionJob
and the InferenceService waiting, then failed with reasons that name the cause; a compression that
fails its quality gate is never served. kwok plays the GPU pods and their exits (the same pipeline
on CPU, for real, is test_main_pipeline.py)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from finetune_helpers import GROUP, VERSION, condition, finetunejob
from finetune_helpers import create as create_finetunejob
from test_compression_operator import REPORT, compressionjob
from test_compression_operator import create as create_compressionjob
from test_inference_operator import create as create_service
from test_inference_operator import service, status, wait_phase
from waiting import wait_for

pytestmark = pytest.mark.cluster


def compression_status(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "compressionjobs", name).get("status") or {}


def test_a_failing_finetune_fails_the_compression_and_the_service_naming_the_cause(custom, namespace, operator):
    create_compressionjob(custom, namespace, compressionjob("small", model={"fineTuneJob": {"name": "tuned"}}))
    create_service(custom, namespace, service("chat", model={"compressionJob": {"name": "small"}}))
    waiting = wait_for(lambda: condition(status(custom, namespace, "chat"), "WaitingForModel"), what="the service waiting")
    assert waiting["status"] == "True" and "CompressionJob small" in waiting["message"]
    assert condition(compression_status(custom, namespace, "small"), "WaitingForInput")["status"] == "True"

    fail = {"outcome": "fail", "exit-code": "2", "duration": "3s",
            "message": json.dumps({"status": "Failed", "reason": "InvalidInput", "message": "Dataset record 7 is not JSON."})}
    create_finetunejob(custom, namespace, finetunejob("tuned", sim=fail))
    failed = wait_phase(custom, namespace, "chat", "Failed", timeout=90)
    ready = condition(failed, "Ready")
    assert ready["reason"] == "InputFailed"
    # The cause travels down the chain: the service names the compression, which names the fine-tune and its reason.
    assert "CompressionJob small failed" in ready["message"] and "FineTuneJob tuned failed" in ready["message"]
    assert "record 7" in ready["message"]
    assert compression_status(custom, namespace, "small")["phase"] == "Failed"


def test_a_compression_that_fails_its_gate_is_never_served(api_client, custom, namespace, operator):
    gate = {**REPORT["qualityGate"], "after": 9.5, "drop": 3.75, "passed": False}
    report = {**REPORT, "status": "Failed", "reason": "QualityGateFailed", "message": "quality gate failed", "qualityGate": gate}
    create_service(custom, namespace, service("chat", model={"compressionJob": {"name": "gated"}}))
    create_compressionjob(custom, namespace, compressionjob("gated", {"outcome": "fail", "exit-code": "2", "duration": "2s",
                                                                      "message": json.dumps(report)}))
    failed = wait_phase(custom, namespace, "chat", "Failed", timeout=90)
    assert condition(failed, "Ready")["reason"] == "QualityGateFailed" and "375.00%" in failed["message"]
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []  # nothing ever ran it
