"""The FineTuneJob builders and the pure reconcile plan, without a cluster."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from llmops.controllers.finetune import builders as build
from llmops.runtime.children import InvalidLocation, child_name, resolve_location
from llmops.runtime.conditions import set_condition
from llmops.controllers.finetune.progress import format_duration, parse, progress_status
from llmops.controllers.finetune.plan import Observed, plan
from llmops.settings import Settings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings()


def body(name="ft", status=None, **spec):
    base = {
        "baseModel": {"uri": "pvc://models/base", "parameterCount": 1_000_000_000},
        "dataset": {"uri": "pvc://data/train.jsonl"},
        "method": "lora",
        "resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"},
        "output": {"uri": "pvc://models/out"},
    }
    base.update(spec)
    return {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 3},
        "spec": base,
        "status": status or {},
    }


def observe(b, jobs=(), pods=()):
    return Observed(b, list(jobs), list(pods), NOW, {"NVIDIA-H100-80GB-HBM3": 81559})


def job_obj(name, conditions=(), suspend=False, attempt=0):
    return {"metadata": {"name": name, "uid": f"job-{name}"}, "spec": {"suspend": suspend},
            "status": {"conditions": [{"type": t, "status": "True", **extra} for t, extra in conditions]}}


def pod_obj(name, phase, attempt=0, exit_code=None, message="", conditions=(), node="n1", ip="127.1.0.5"):
    terminated = {"exitCode": exit_code, "message": message} if exit_code is not None else None
    return {
        "metadata": {"name": name, "labels": {"llmops.dev/attempt": str(attempt)}},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "podIP": ip, "conditions": list(conditions),
                   "containerStatuses": [{"state": {"terminated": terminated} if terminated else {"running": {}}}]},
    }


def test_first_plan_creates_one_job_carrying_the_config_and_records_estimate():
    p = plan(observe(body()), SETTINGS)
    assert [(c["kind"], c["metadata"]["name"]) for c in p.create] == [("Job", "ft-ftj")]
    template = p.create[0]["spec"]["template"]
    config = json.loads(template["metadata"]["annotations"]["llmops.dev/runner-config"])
    assert config["method"] == "lora" and config["jobName"] == "ft"
    projected = next(v for v in template["spec"]["volumes"] if v["name"] == "config")["downwardAPI"]["items"][0]
    assert projected == {"path": "config.json", "fieldRef": {"fieldPath": "metadata.annotations['llmops.dev/runner-config']"}}
    assert p.status["phase"] == "Pending" and p.status["selectedMethod"] == "lora"
    assert p.status["vramEstimate"]["availableGib"] == 80.0  # the product table wins over the node's MiB label
    assert p.status["observedGeneration"] == 3


def test_plan_is_idempotent_on_the_same_observation():
    b = body()
    first = plan(observe(b), SETTINGS)
    b["status"] = first.status
    second = plan(observe(b), SETTINGS)
    assert second.status == first.status and [c["metadata"]["name"] for c in second.create] == ["ft-ftj"]
    assert second.events == []  # nothing changed, nothing to tell


def test_runner_config_resolves_locations_and_holds_no_secret():
    b = body(baseModel={"uri": "hf://org/m", "tokenSecretRef": {"name": "s"}}, output={"uri": "pvc://models/out/run1", "mergeLora": True})
    from llmops.api.finetune import FineTuneJobSpec

    spec = FineTuneJobSpec.model_validate(b["spec"])
    config = build.runner_config(b, spec, "lora", SETTINGS)
    assert config["model"] == {"path": "org/m", "revision": None, "tokenEnv": "HF_TOKEN"}
    assert config["dataset"]["path"] == "/mnt/pvc/data/train.jsonl"
    assert config["output"] == {"path": "/mnt/pvc/models/out/run1", "mergeLora": True}
    assert config["lora"] == {} and "qlora" not in config
    job = build.job(b, spec, config, SETTINGS, attempt=0)
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"data": True, "models": False}  # output claim writable, data read-only
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}
    assert env["LLMOPS_CHECKPOINT_DIR"]["value"] == "/mnt/pvc/models/out/run1/checkpoints"


def test_s3_locations_fail_with_an_actionable_reason():
    p = plan(observe(body(dataset={"uri": "s3://bucket/train.jsonl"})), SETTINGS)
    assert p.status["phase"] == "Failed" and p.create == []
    failed = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "UnsupportedLocation" and "pvc://" in failed["message"]
    with pytest.raises(InvalidLocation):
        resolve_location("pvc:///path", "/mnt")


def test_failed_attempt_restarts_group_then_fails():
    b = body(backoffLimit=1, status={"selectedMethod": "lora", "attempt": 0, "restarts": 0})
    report = json.dumps({"status": "Failed", "reason": "NCCLTimeout", "message": "rank 1 timed out"})
    failed_job = job_obj("ft-ftj", [("Failed", {"reason": "BackoffLimitExceeded"})])
    p = plan(observe(b, [failed_job], [pod_obj("ft-a", "Failed", exit_code=1, message=report)]), SETTINGS)
    assert (p.status["attempt"], p.status["restarts"], p.status["phase"]) == (1, 1, "Pending")
    assert ("Warning", "Restarting") in [(t, r) for t, r, _ in p.events]
    b["status"] = p.status
    second = plan(observe(b, [failed_job, job_obj("ft-ftj-r1", [("Failed", {})])], [pod_obj("ft-b", "Failed", attempt=1, exit_code=1, message=report)]), SETTINGS)
    assert second.status["phase"] == "Failed"
    cond = next(c for c in second.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "NCCLTimeout" and "rank 1 timed out" in cond["message"] and "backoffLimit is 1" in cond["message"]


def test_disruption_retries_without_counting():
    b = body(backoffLimit=0, status={"selectedMethod": "lora", "attempt": 0, "restarts": 0})
    evicted = pod_obj("ft-a", "Failed", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])
    p = plan(observe(b, [job_obj("ft-ftj", [("Failed", {"reason": "PodFailurePolicy"})])], [evicted]), SETTINGS)
    assert (p.status["attempt"], p.status["restarts"], p.status["phase"]) == (1, 0, "Pending")


def test_exit_code_2_is_permanent():
    b = body(backoffLimit=5, status={"selectedMethod": "lora", "attempt": 0, "restarts": 0})
    bad = pod_obj("ft-a", "Failed", exit_code=2, message=json.dumps({"reason": "InvalidConfig", "message": "unknown target module foo."}))
    p = plan(observe(b, [job_obj("ft-ftj", [("Failed", {})])], [bad]), SETTINGS)
    assert p.status["phase"] == "Failed" and p.status["restarts"] == 0


def test_terminal_status_is_left_alone():
    b = body(status={"phase": "Failed", "selectedMethod": "lora"})
    p = plan(observe(b), SETTINGS)
    assert p.create == [] and p.patch == {} and p.status["phase"] == "Failed"


def test_suspend_patches_the_job_and_resume_unsuspends():
    b = body(suspend=True, status={"selectedMethod": "lora"})
    p = plan(observe(b, [job_obj("ft-ftj")]), SETTINGS)
    assert p.patch == {("Job", "ft-ftj"): {"spec": {"suspend": True}}} and p.status["phase"] == "Suspended"
    b = body(suspend=False, status=p.status)
    p = plan(observe(b, [job_obj("ft-ftj", suspend=True)]), SETTINGS)
    assert p.patch == {("Job", "ft-ftj"): {"spec": {"suspend": False}}}


def test_deadline_counts_from_start_and_deletes_the_running_job():
    started = (NOW - timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    b = body(activeDeadlineSeconds=60, status={"selectedMethod": "lora", "startTime": started, "phase": "Running"})
    p = plan(observe(b, [job_obj("ft-ftj")], [pod_obj("ft-a", "Running")]), SETTINGS)
    assert p.delete == [("Job", "ft-ftj")] and p.status["phase"] == "Failed"
    assert next(c for c in p.status["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"


def test_unknown_model_size_skips_preflight_and_auto_defaults_to_lora():
    b = body(method="auto", baseModel={"uri": "pvc://models/base"})
    p = plan(observe(b), SETTINGS)
    fit = next(c for c in p.status["conditions"] if c["type"] == "ResourcesFit")
    assert fit["status"] == "Unknown" and "parameterCount" in fit["message"]
    assert p.status["selectedMethod"] == "lora" and "safe default" in p.status["methodReason"]


def test_child_names_stay_dns_labels():
    name = child_name("a" * 52, "ftj", "r12")
    assert len(name) <= 63 and name.endswith("-ftj-r12")
    assert child_name("x" * 70, "ftj") != child_name("x" * 71, "ftj")
    assert build.job_name("ft", 0) == "ft-ftj" and build.job_name("ft", 2) == "ft-ftj-r2"


def test_child_names_carry_the_kind_and_never_collide():
    """A FineTuneJob and a CompressionJob named alike, and a job named like another's retry, get distinct children."""
    ft = {child_name("m", "ftj", s) for s in ("", "r1", "workers")}
    cp = {child_name("m", "cpj", s) for s in ("", "r1", "workers")}
    retry_lookalike = {child_name("m-ftj-r1", "ftj", s) for s in ("", "r1", "workers")}
    assert not ft & cp and not ft & retry_lookalike


def test_condition_transition_time_moves_only_on_status_change():
    t1, t2 = NOW, NOW + timedelta(minutes=5)
    conds = set_condition(None, "Running", True, "PodsRunning", "1 of 1", 1, t1)
    same = set_condition(conds, "Running", True, "PodsRunning", "still", 2, t2)
    flipped = set_condition(same, "Running", False, "Completed", "done", 2, t2)
    assert same[0]["lastTransitionTime"] == "2026-11-23T12:00:00Z" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-11-23T12:05:00Z"


def test_progress_from_runner_metrics():
    text = (
        "# TYPE llmops_finetune_step gauge\nllmops_finetune_step{job_name=\"ft\"} 25.0\n"
        "# TYPE llmops_finetune_total_steps gauge\nllmops_finetune_total_steps{job_name=\"ft\"} 100.0\n"
        "# TYPE llmops_finetune_loss gauge\nllmops_finetune_loss{job_name=\"ft\"} 1.25\n"
        "# TYPE llmops_finetune_eval_loss gauge\nllmops_finetune_eval_loss{job_name=\"ft\"} NaN\n"
    )
    values = parse(text)
    out = progress_status(values, NOW - timedelta(seconds=100), NOW)
    # 25 steps in 100 s: 4 s a step, 75 steps left → 300 s.
    assert out["step"] == 25 and out["totalSteps"] == 100 and out["percent"] == "25%" and out["eta"] == "5m00s"
    assert out["loss"] == 1.25 and "evalLoss" not in out
    assert format_duration(3725) == "1h02m"


def test_failed_create_events_explain_missing_pods():
    b = body(status={"selectedMethod": "lora", "jobName": "ft-ftj"})
    obs = observe(b, [job_obj("ft-ftj")])
    obs.failed_creates = ['pods "ft-" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1']
    p = plan(obs, SETTINGS)
    running = next(c for c in p.status["conditions"] if c["type"] == "Running")
    assert (running["reason"], p.status["phase"]) == ("FailedCreate", "Pending") and "exceeded quota" in running["message"]


def _stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_job_deadline_is_fixed_from_two_start_times_not_shrunk_on_every_pass():
    """Kubernetes counts a Job's activeDeadlineSeconds from the Job's own startTime: the Job must get
    `first start + limit - Job start`, the same at every pass, so it is patched once and never shrinks."""
    first_start, job_start = NOW - timedelta(seconds=10), NOW - timedelta(seconds=12)
    status = {"selectedMethod": "lora", "startTime": _stamp(first_start), "phase": "Running", "jobName": "ft-ftj"}
    job = job_obj("ft-ftj")
    job["status"]["startTime"] = _stamp(job_start)
    job["spec"]["activeDeadlineSeconds"] = 40  # as created, before the first pods ran
    running = [pod_obj("ft-a", "Running")]
    early = plan(Observed(body(activeDeadlineSeconds=40, status=status), [job], running, NOW, {}), SETTINGS)
    assert early.patch == {("Job", "ft-ftj"): {"spec": {"activeDeadlineSeconds": 42}}}
    job["spec"]["activeDeadlineSeconds"] = 42
    for later in (NOW + timedelta(seconds=5), NOW + timedelta(seconds=20)):
        again = plan(Observed(body(activeDeadlineSeconds=40, status=status), [job], running, later, {}), SETTINGS)
        assert again.patch == {} and again.status["phase"] == "Running"


def test_a_retry_gets_the_time_left_of_the_whole_limit():
    first_start = NOW - timedelta(seconds=25)
    failed = job_obj("ft-ftj", [("Failed", {})])
    status = {"selectedMethod": "lora", "startTime": _stamp(first_start), "attempt": 1, "restarts": 1, "phase": "Pending"}
    p = plan(Observed(body(activeDeadlineSeconds=40, status=status), [failed], [], NOW, {}), SETTINGS)
    retry = next(c for c in p.create if c["kind"] == "Job")
    assert retry["metadata"]["name"] == "ft-ftj-r1" and retry["spec"]["activeDeadlineSeconds"] == 15


def test_bf16_on_a_gpu_without_it_fails_before_any_pod():
    v100 = {"gpusPerNode": 1, "gpuType": "Tesla-V100-SXM2-16GB"}
    p = plan(observe(body(resources=v100)), SETTINGS)  # precision defaults to bf16
    failed = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert p.create == [] and failed["reason"] == "UnsupportedPrecision" and "fp16" in failed["message"]
    assert ("Warning", "UnsupportedPrecision") in [(t, r) for t, r, _ in p.events]
    fp16 = plan(observe(body(resources=v100, training={"precision": "fp16"})), SETTINGS)
    assert [c["kind"] for c in fp16.create] == ["Job"]
    unknown = plan(observe(body(resources={"gpusPerNode": 1, "gpuType": "Some-Future-GPU"})), SETTINGS)
    assert [c["kind"] for c in unknown.create] == ["Job"]  # unknown product: the runner decides on the node


def test_a_failed_pod_before_the_job_fails_tells_nothing_misleading():
    running = {"selectedMethod": "lora", "phase": "Running", "startTime": _stamp(NOW), "jobName": "ft-ftj",
               "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "1 of 1 pods running",
                               "lastTransitionTime": _stamp(NOW), "observedGeneration": 3}]}
    p = plan(observe(body(status=running), [job_obj("ft-ftj")], [pod_obj("ft-a", "Failed", exit_code=1)]), SETTINGS)
    assert p.status["phase"] == "Running" and p.events == []  # no "waiting for pods" write: the Job's failure comes next


def test_a_rank_that_finished_first_still_counts_as_started():
    b = body(resources={"nodes": 2, "gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}, status={"selectedMethod": "lora"})
    pods = [pod_obj("ft-0", "Succeeded"), pod_obj("ft-1", "Running")]
    assert plan(observe(b, [job_obj("ft-ftj")], pods), SETTINGS).status["phase"] == "Running"


def test_a_job_complete_before_its_pod_report_arrives_waits_for_the_report():
    """Jobs and pods come on separate watch streams: the Job's Complete may arrive first.
    Finishing then would lose the runner's result for good (a finished job is never revisited)."""
    b = body(status={"selectedMethod": "lora", "phase": "Running", "jobName": "ft-ftj"})
    done = job_obj("ft-ftj", [("Complete", {})])
    early = plan(observe(b, [done], [pod_obj("ft-a", "Running")]), SETTINGS)
    assert early.status["phase"] == "Running" and "result" not in early.status
    report = json.dumps({"status": "Succeeded", "artifactUri": "pvc://models/out", "metrics": {"train_loss": 0.5}})
    late = plan(observe(b, [done], [pod_obj("ft-a", "Succeeded", exit_code=0, message=report)]), SETTINGS)
    assert late.status["phase"] == "Succeeded" and late.status["result"]["artifactUri"] == "pvc://models/out"


def test_a_failed_job_waits_for_its_failed_pod_to_tell_why():
    b = body(backoffLimit=3, status={"selectedMethod": "lora", "phase": "Running", "jobName": "ft-ftj", "attempt": 0, "restarts": 0})
    failed = job_obj("ft-ftj", [("Failed", {"reason": "PodFailurePolicy"})])
    early = plan(observe(b, [failed], [pod_obj("ft-a", "Running")]), SETTINGS)
    assert early.status["phase"] == "Running" and early.create == []
    bad = pod_obj("ft-a", "Failed", exit_code=2, message=json.dumps({"reason": "InvalidConfig", "message": "no such column"}))
    late = plan(observe(b, [failed], [bad]), SETTINGS)
    assert late.status["phase"] == "Failed" and late.status["restarts"] == 0  # exit 2 is permanent: seen only from the pod


def test_the_result_names_the_output_as_the_cluster_does_not_the_pods_mount_path():
    """The runner reports the path it wrote inside its pod; the next resource of the chain needs the URI."""
    b = body(status={"selectedMethod": "lora", "phase": "Running", "jobName": "ft-ftj"})
    done = job_obj("ft-ftj", [("Complete", {})])
    report = json.dumps({"status": "Succeeded", "artifactUri": "/mnt/pvc/models/out", "metrics": {"trainLoss": 0.5}})
    result = plan(observe(b, [done], [pod_obj("ft-a", "Succeeded", exit_code=0, message=report)]), SETTINGS).status["result"]
    assert result["artifactUri"] == b["spec"]["output"]["uri"]
    assert "/mnt/pvc" not in result["artifactUri"]


def test_a_running_multi_node_attempt_asks_again_for_its_headless_service():
    # Refused beside its Job (RBAC, a quota), the Service used to stay missing: the plan asked for
    # children only while the Job was missing, and the ranks waited for rank 0 forever.
    b = body(resources={"nodes": 2, "gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}, status={"selectedMethod": "lora"})
    running = plan(observe(b, [job_obj("ft-ftj")], [pod_obj("ft-0", "Running"), pod_obj("ft-1", "Running")]), SETTINGS)
    assert [(c["kind"], c["metadata"]["name"]) for c in running.create] == [("Service", "ft-ftj-workers")]
    single = plan(observe(body(status={"selectedMethod": "lora"}), [job_obj("ft-ftj")], [pod_obj("ft-0", "Running")]), SETTINGS)
    assert single.create == []  # nothing beside a one-node Job; the Job itself is never asked for twice
