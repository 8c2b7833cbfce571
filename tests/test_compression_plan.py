"""The CompressionJob builders and the pure reconcile plan, without a cluster."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from llmops.controllers.compression import inputs
from llmops.controllers.compression.plan import Observed, plan
from llmops.runtime.conditions import find
from llmops.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings()
CHAIN = [{"mergeLora": {}}, {"prune": {"method": "magnitude", "sparsity": 0.5}}, {"quantize": {"method": "onnx-dynamic-int8"}}]


def body(status=None, **spec):
    base = {
        "model": {"fineTuneJob": {"name": "ft"}},
        "stages": CHAIN,
        "evaluation": {"datasetUri": "pvc://data/eval.jsonl", "metric": "exact-match", "maxAccuracyDrop": 0.05},
        "output": {"uri": "pvc://models/small"},
    }
    base.update(spec)
    return {"apiVersion": "llmops.dev/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "cj", "namespace": "ns", "uid": "uid-c", "generation": 2}, "spec": base, "status": status or {}}


def finetunejob(phase, artifact="pvc://outputs/ft", message=None):
    status = {"phase": phase, "message": message or phase}
    if phase == "Succeeded":
        status["result"] = {"artifactUri": artifact}
    return {"spec": {"baseModel": {"uri": "pvc://inputs/base"}}, "status": status}


def observe(b, input_job=None, jobs=(), pods=(), progress=None):
    return Observed(b, list(jobs), list(pods), NOW, input_job=input_job, progress=progress)


def job_obj(name, *conditions):
    return {"metadata": {"name": name, "uid": f"job-{name}"}, "spec": {},
            "status": {"conditions": [{"type": t, "status": "True"} for t in conditions]}}


def pod_obj(phase, report=None, exit_code=None):
    state = {"terminated": {"exitCode": exit_code, "message": json.dumps(report) if report else ""}} if exit_code is not None else {"running": {}}
    return {"metadata": {"name": "cj-cpj-abc", "labels": {"llmops.dev/attempt": "0"}}, "spec": {"nodeName": "n"},
            "status": {"phase": phase, "podIP": "10.0.0.5", "containerStatuses": [{"state": state}]}}


def runner_config(p) -> dict:
    return json.loads(p.create[0]["spec"]["template"]["metadata"]["annotations"]["llmops.dev/runner-config"])


def test_waits_for_the_finetunejob_naming_it_and_creates_nothing():
    p = plan(observe(body(), finetunejob("Running")), SETTINGS)
    waiting = find(p.status["conditions"], "WaitingForInput")
    assert waiting["status"] == "True" and "FineTuneJob ft" in waiting["message"] and "Running" in waiting["message"]
    assert p.status["phase"] == "Pending" and p.create == []


def test_starts_on_the_finetunejobs_artifact_with_the_adapters_base_mounted():
    p = plan(observe(body(), finetunejob("Succeeded")), SETTINGS)
    assert [c["metadata"]["name"] for c in p.create] == ["cj-cpj"]
    config = runner_config(p)
    assert config["model"] == {"path": "/mnt/pvc/outputs/ft", "basePath": "/mnt/pvc/inputs/base", "revision": None, "tokenEnv": None}
    assert [s["name"] for s in config["stages"]] == ["merge-lora-0", "prune-1", "quantize-2"]
    assert config["evaluation"]["path"] == "/mnt/pvc/data/eval.jsonl" and config["output"]["path"] == "/mnt/pvc/models/small"
    mounts = {m["mountPath"]: m["readOnly"] for m in p.create[0]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc")}
    assert mounts == {"/mnt/pvc/outputs": True, "/mnt/pvc/inputs": True, "/mnt/pvc/data": True, "/mnt/pvc/models": False}
    assert find(p.status["conditions"], "WaitingForInput")["status"] == "False"
    assert p.status["inputUri"] == "pvc://outputs/ft" and p.status["progress"] == "0/3"
    assert [s["phase"] for s in p.status["stages"]] == ["Pending"] * 3


def test_a_failed_finetunejob_fails_this_job_naming_it():
    p = plan(observe(body(), finetunejob("Failed", message="dataset line 2 is not JSON")), SETTINGS)
    assert p.status["phase"] == "Failed" and p.create == []
    failed = find(p.status["conditions"], "Failed")
    assert failed["reason"] == "InputFailed" and "FineTuneJob ft" in failed["message"] and "line 2" in failed["message"]
    assert ("Warning", "InputFailed") in [(e[0], e[1]) for e in p.events]


def test_a_missing_input_waits_and_a_deleted_one_says_so():
    p = plan(observe(body(), None), SETTINGS)
    assert "does not exist yet" in find(p.status["conditions"], "WaitingForInput")["message"]
    again = plan(observe(body(status=p.status), None), SETTINGS)  # the next pass, still without it: same words
    assert "does not exist yet" in find(again.status["conditions"], "WaitingForInput")["message"]
    seen = plan(observe(body(), finetunejob("Running")), SETTINGS).status
    p = plan(observe(body(status=seen), None), SETTINGS)
    assert p.status["phase"] == "Pending" and "was deleted" in find(p.status["conditions"], "WaitingForInput")["message"]
    again = plan(observe(body(status=p.status), None), SETTINGS)
    assert "was deleted" in find(again.status["conditions"], "WaitingForInput")["message"]


def test_inputs_name_the_finetunejob_so_its_changes_reconcile_this_job():
    assert inputs(body()) == [("FineTuneJob", "ns", "ft")]
    assert inputs(body(model={"uri": "pvc://m/x"})) == []


@pytest.mark.parametrize(("stages", "resources", "image", "gpus"), [
    (CHAIN, {}, SETTINGS.compress_onnx_image, 0),  # ONNX INT8 lives in its own image and runs on CPU
    ([{"prune": {"method": "magnitude"}}], {}, SETTINGS.compress_image, 0),
    ([{"quantize": {"method": "w4a16", "calibration": {"datasetUri": "pvc://data/c.jsonl"}}}], {}, SETTINGS.compress_image, 1),
    ([{"quantize": {"method": "fp8"}}], {"gpus": 0}, SETTINGS.compress_image, 0),  # an explicit 0 wins
])
def test_the_image_and_gpus_follow_the_stages(stages, resources, image, gpus):
    p = plan(observe(body(model={"uri": "pvc://m/model"}, stages=stages, resources=resources)), SETTINGS)
    container = p.create[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image and p.status["image"] == image and p.status["gpus"] == gpus
    assert container["command"] == ["python", "-m", "llmops_runners.compress"]
    assert ("nvidia.com/gpu" in container.get("resources", {}).get("limits", {})) == bool(gpus)


def test_running_progress_shows_which_stage_runs():
    started = plan(observe(body(), finetunejob("Succeeded")), SETTINGS).status
    p = plan(observe(body(status=started), finetunejob("Succeeded"), [job_obj("cj-cpj")], [pod_obj("Running")], {"stage": 1, "stagesTotal": 3}), SETTINGS)
    assert p.status["phase"] == "Running" and p.status["progress"] == "1/3"
    assert [s["phase"] for s in p.status["stages"]] == ["Succeeded", "Running", "Pending"]


REPORT = {
    "status": "Succeeded", "reason": "Completed", "message": "ok", "artifactUri": "/mnt/pvc/models/small",
    "metrics": {"sizeRatio": 0.27, "qualityBefore": 0.9, "qualityAfter": 0.89, "qualityDrop": 0.0111, "greedyAgreement": 0.95},
    "stages": [{"name": n, "type": t, "phase": "Succeeded", "metrics": {"sizeBytesAfter": 100.0, "durationSeconds": 1.5}}
               for n, t in (("merge-lora-0", "mergeLora"), ("prune-1", "prune"), ("quantize-2", "quantize"))],
    "qualityGate": {"metric": "exact-match", "before": 0.9, "after": 0.89, "drop": 0.0111, "maxDrop": 0.05, "passed": True, "greedyAgreement": 0.95},
}


def test_success_records_every_stage_the_totals_and_the_gate():
    started = plan(observe(body(), finetunejob("Succeeded")), SETTINGS).status
    p = plan(observe(body(status=started), finetunejob("Succeeded"), [job_obj("cj-cpj", "Complete")], [pod_obj("Succeeded", REPORT, 0)]), SETTINGS)
    s = p.status
    assert s["phase"] == "Succeeded" and s["artifactUri"] == "pvc://models/small" and s["progress"] == "3/3"
    assert [(x["name"], x["phase"], x["metrics"]["durationSeconds"]) for x in s["stages"]] == [
        ("merge-lora-0", "Succeeded", 1.5), ("prune-1", "Succeeded", 1.5), ("quantize-2", "Succeeded", 1.5)]
    assert s["metrics"]["sizeRatio"] == 0.27 and s["qualityGate"]["passed"] is True
    assert "size ratio 0.27" in s["message"]


def test_a_failed_gate_fails_at_once_with_both_numbers_and_keeps_the_figures():
    report = {**REPORT, "status": "Failed", "reason": "QualityGateFailed",
              "message": "quality gate failed: exact-match went from 0.9 to 0.2, a drop of 77.78%, more than maxAccuracyDrop 5.00%",
              "qualityGate": {**REPORT["qualityGate"], "after": 0.2, "drop": 0.7778, "passed": False}}
    started = plan(observe(body(backoffLimit=3), finetunejob("Succeeded")), SETTINGS).status
    p = plan(observe(body(status=started, backoffLimit=3), finetunejob("Succeeded"), [job_obj("cj-cpj", "Failed")], [pod_obj("Failed", report, 2)]), SETTINGS)
    s = p.status
    assert s["phase"] == "Failed" and s.get("restarts", 0) == 0 and p.create == []  # exit 2: never retried
    failed = find(s["conditions"], "Failed")
    assert failed["reason"] == "QualityGateFailed" and "0.9" in failed["message"] and "0.2" in failed["message"]
    assert s["qualityGate"]["passed"] is False and s["qualityGate"]["after"] == 0.2
    assert [x["phase"] for x in s["stages"]] == ["Succeeded"] * 3 and "artifactUri" not in s


def test_bad_input_from_the_runner_fails_without_retry():
    report = {"status": "Failed", "reason": "InvalidInput", "message": "Stage 2 (prune-1): the recovery data /x does not exist."}
    started = plan(observe(body(), finetunejob("Succeeded")), SETTINGS).status
    p = plan(observe(body(status=started), finetunejob("Succeeded"), [job_obj("cj-cpj", "Failed")], [pod_obj("Failed", report, 2)]), SETTINGS)
    assert p.status["phase"] == "Failed" and find(p.status["conditions"], "Failed")["reason"] == "InvalidInput" and p.create == []


def test_once_started_the_chain_keeps_its_input_when_the_finetunejob_is_deleted():
    started = plan(observe(body(), finetunejob("Succeeded")), SETTINGS).status
    p = plan(observe(body(status=started), None, [job_obj("cj-cpj")], [pod_obj("Running")]), SETTINGS)
    assert p.status["phase"] == "Running" and p.create == []
    assert find(p.status["conditions"], "WaitingForInput")["reason"] == "InputReady"
    assert p.status["inputUri"] == "pvc://outputs/ft" and p.status["inputBaseUri"] == "pvc://inputs/base"
