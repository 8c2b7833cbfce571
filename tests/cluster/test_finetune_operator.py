"""FineTuneJob reconciled end to end by the real operator process on the real control plane.

kwok plays the pods: annotations (through spec.podMetadata) choose whether a
pod succeeds, fails or keeps running, and what its termination message says,
i.e. what a runner would report.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time

import pytest
from kubernetes import client

from finetune_helpers import (
    condition,
    create,
    events,
    finetunejob,
    patch_spec,
    status,
    succeed_with,
    wait_phase,
)
from waiting import wait_for

pytestmark = pytest.mark.cluster


def _jobs(batch, namespace):
    return sorted(batch.list_namespaced_job(namespace).items, key=lambda j: j.metadata.creation_timestamp)


def _pods(core, namespace, selector=""):
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def test_success_path(custom, core, batch, namespace, operator):
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hub"), string_data={"token": "hf_supersecret"}))
    report = {"status": "Succeeded", "artifactUri": "file:///output/ok", "metrics": {"train_loss": 0.42, "eval_loss": 0.5}}
    obj = finetunejob("ok", sim=succeed_with(report, "3s"), baseModel={"uri": "hf://org/tiny", "tokenSecretRef": {"name": "hub", "key": "token"}, "parameterCount": 125_000_000},
                      resources={"gpusPerNode": 2, "gpuType": "NVIDIA-H100-80GB-HBM3", "cpu": 4, "memory": "32Gi", "sharedMemory": "8Gi"})
    create(custom, namespace, obj)
    running = wait_phase(custom, namespace, "ok", "Running")
    assert condition(running, "Running")["status"] == "True" and running["startTime"]

    job = batch.read_namespaced_job("ok-ftj", namespace)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "2" and container.resources.requests["nvidia.com/gpu"] == "2"
    assert container.resources.limits["memory"] == "32Gi"
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert any(t.key == "nvidia.com/gpu" and t.operator == "Exists" for t in pod.tolerations)
    assert container.termination_message_policy == "FallbackToLogsOnError"
    shm = next(v for v in pod.volumes if v.name == "dshm")
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "8Gi"
    token = next(e for e in container.env if e.name == "HF_TOKEN")
    assert token.value is None and token.value_from.secret_key_ref.name == "hub"
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("FineTuneJob", "ok", True)
    assert job.metadata.labels["app.kubernetes.io/managed-by"] == "llmops-operator"
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items] == ["kube-root-ca.crt"]  # one create: the Job
    annotation = job.spec.template.metadata.annotations["llmops.dev/runner-config"]
    assert "hf_supersecret" not in annotation
    runner_config = json.loads(annotation)
    assert runner_config["method"] == "lora" and runner_config["model"] == {"path": "org/tiny", "revision": None, "tokenEnv": "HF_TOKEN"}

    done = wait_phase(custom, namespace, "ok", "Succeeded")
    assert done["result"] == {"artifactUri": "file:///output/ok", "metrics": {"train_loss": 0.42, "eval_loss": 0.5}}
    assert condition(done, "Succeeded")["status"] == "True" and done["completionTime"]
    assert all(c["observedGeneration"] == 1 for c in done["conditions"])
    operator_events = wait_for(lambda: events(core, namespace, "ok"), what="the terminal event")
    assert [(e.type, e.reason) for e in operator_events] == [("Normal", "Completed")]  # the happy path tells only its end
    assert "hf_supersecret" not in operator.log_tail(10**6)


def test_failure_path_retries_then_fails_with_runner_reason(custom, core, batch, namespace, operator):
    report = {"status": "Failed", "reason": "CUDAOutOfMemory", "message": "CUDA out of memory at step 12"}
    obj = finetunejob("bad", sim={"outcome": "fail", "duration": "500ms", "exit-code": "1", "message": json.dumps(report)}, backoffLimit=2)
    create(custom, namespace, obj)
    failed = wait_phase(custom, namespace, "bad", "Failed", timeout=90)
    cond = condition(failed, "Failed")
    assert cond["reason"] == "CUDAOutOfMemory" and "CUDA out of memory at step 12" in cond["message"]
    assert failed["restarts"] == 2
    assert [j.metadata.name for j in _jobs(batch, namespace)] == ["bad-ftj", "bad-ftj-r1", "bad-ftj-r2"]
    pods_after = len(_pods(core, namespace))
    assert pods_after == 3
    time.sleep(4)  # several timer periods: a failed job must stay failed
    assert len(_jobs(batch, namespace)) == 3 and len(_pods(core, namespace)) == pods_after
    assert status(custom, namespace, "bad")["phase"] == "Failed"
    assert "Restarting" in [e.reason for e in events(core, namespace, "bad")]


def test_invalid_input_is_not_retried(custom, batch, namespace, operator):
    report = {"status": "Failed", "reason": "InvalidConfig", "message": "dataset file /data/train.jsonl does not exist."}
    create(custom, namespace, finetunejob("cfg", sim={"outcome": "fail", "duration": "300ms", "exit-code": "2", "message": json.dumps(report)}, backoffLimit=3))
    failed = wait_phase(custom, namespace, "cfg", "Failed")
    assert condition(failed, "Failed")["reason"] == "InvalidConfig"
    assert len(_jobs(batch, namespace)) == 1


def test_multi_node_indexed_job_with_rendezvous(custom, core, batch, namespace, operator):
    obj = finetunejob("multi", sim={"outcome": "run"}, method="full",
                      resources={"nodes": 2, "gpusPerNode": 8, "gpuType": "NVIDIA-H100-80GB-HBM3"}, deepspeed={"zeroStage": 3})
    create(custom, namespace, obj)
    wait_phase(custom, namespace, "multi", "Running")
    job = batch.read_namespaced_job("multi-ftj", namespace)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism, job.spec.backoff_limit) == ("Indexed", 2, 2, 0)
    service = core.read_namespaced_service("multi-ftj-workers", namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses
    assert job.spec.template.spec.subdomain == "multi-ftj-workers"
    pods = _pods(core, namespace, "llmops.dev/name=multi")
    assert len(pods) == 2 and len({p.spec.node_name for p in pods}) == 2  # 8 GPUs each: one node per pod
    for pod in pods:
        env = {e.name: e for e in pod.spec.containers[0].env}
        assert env["MASTER_ADDR"].value == f"multi-ftj-0.multi-ftj-workers.{namespace}.svc"
        assert (env["NNODES"].value, env["NPROC_PER_NODE"].value, env["WORLD_SIZE"].value) == ("2", "8", "16")
        assert env["NODE_RANK"].value_from.field_ref.field_path == "metadata.labels['batch.kubernetes.io/job-completion-index']"
        assert pod.metadata.labels["batch.kubernetes.io/job-completion-index"] in ("0", "1")
        assert pod.metadata.labels["job-name"] == "multi-ftj" and pod.spec.hostname.startswith("multi-ftj-")


def test_unschedulable_is_reported_not_running(custom, namespace, operator):
    create(custom, namespace, finetunejob("huge", sim={"outcome": "run"}, resources={"gpusPerNode": 16}))
    st = wait_for(lambda: (s := status(custom, namespace, "huge")) and (condition(s, "PodsScheduled") or {}).get("reason") == "Unschedulable" and s,
                  what="Unschedulable reported")
    assert st["phase"] == "Pending"
    assert "nvidia.com/gpu" in condition(st, "PodsScheduled")["message"]
    assert condition(st, "Running")["status"] == "False"


def test_suspend_and_resume(custom, core, batch, namespace, operator):
    create(custom, namespace, finetunejob("sus", sim={"outcome": "run"}, suspend=True))
    st = wait_phase(custom, namespace, "sus", "Suspended")
    assert condition(st, "Suspended")["status"] == "True"
    assert batch.read_namespaced_job("sus-ftj", namespace).spec.suspend is True
    time.sleep(1.5)
    assert _pods(core, namespace) == []
    patch_spec(custom, namespace, "sus", {"suspend": False})
    wait_phase(custom, namespace, "sus", "Running")
    patch_spec(custom, namespace, "sus", {"suspend": True})
    wait_phase(custom, namespace, "sus", "Suspended")
    wait_for(lambda: not [p for p in _pods(core, namespace) if p.status.phase == "Running" and not p.metadata.deletion_timestamp], what="pods stopped")


def test_kueue_queue_label_and_admission(custom, batch, namespace, operator):
    create(custom, namespace, finetunejob("queued", sim={"outcome": "run"}, scheduling={"queueName": "team-a"}))
    st = wait_for(lambda: (s := status(custom, namespace, "queued")) and (condition(s, "Suspended") or {}).get("reason") == "QueuedInKueue" and s,
                  what="queued in Kueue")
    job = batch.read_namespaced_job("queued-ftj", namespace)
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a" and job.spec.suspend is True
    assert st["phase"] == "Pending"
    batch.patch_namespaced_job("queued-ftj", namespace, {"spec": {"suspend": False}})  # what Kueue does on admission
    wait_phase(custom, namespace, "queued", "Running")


def test_deadline_exceeded(custom, namespace, operator):
    create(custom, namespace, finetunejob("slow", sim={"outcome": "run"}, activeDeadlineSeconds=3))
    failed = wait_phase(custom, namespace, "slow", "Failed", timeout=60)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"


def test_vram_preflight_rejects_70b_full_and_auto_picks_qlora(custom, batch, namespace, operator):
    big = {"uri": "hf://meta-llama/Meta-Llama-3-70B", "parameterCount": 70_000_000_000}
    create(custom, namespace, finetunejob("big-full", baseModel=big, method="full"))
    create(custom, namespace, finetunejob("big-auto", sim={"outcome": "run"}, baseModel=big, method="auto"))
    failed = wait_phase(custom, namespace, "big-full", "Failed")
    cond = condition(failed, "Failed")
    assert cond["reason"] == "InsufficientGPUMemory"
    numbers = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) GiB", cond["message"])]
    assert any(n > 500 for n in numbers) and 80.0 in numbers, cond["message"]
    assert failed["vramEstimate"]["perGpuGib"] > failed["vramEstimate"]["availableGib"] == 80.0
    auto = wait_phase(custom, namespace, "big-auto", "Running")
    assert auto["selectedMethod"] == "qlora" and "qlora" in auto["methodReason"]
    assert auto["vramEstimate"]["perGpuGib"] <= 80.0
    assert [j.metadata.name for j in _jobs(batch, namespace)] == ["big-auto-ftj"]  # no pod for the rejected one
    runner_config = batch.read_namespaced_job("big-auto-ftj", namespace).spec.template.metadata.annotations["llmops.dev/runner-config"]
    assert json.loads(runner_config)["method"] == "qlora"


def test_operator_metrics_count_reconciles(custom, namespace, operator):
    def reconciles() -> float:
        match = re.search(r'llmops_reconcile_total\{kind="FineTuneJob",result="success"\} (\S+)', operator.metrics())
        return float(match.group(1)) if match else 0.0

    before = reconciles()
    create(custom, namespace, finetunejob("m", sim=succeed_with({"status": "Succeeded"}, "1s")))
    wait_phase(custom, namespace, "m", "Succeeded")
    assert reconciles() > before
    text = operator.metrics()
    assert f'llmops_object_phase{{kind="FineTuneJob",name="m",namespace="{namespace}",phase="Succeeded"}} 1.0' in text
    assert "llmops_reconcile_duration_seconds_bucket" in text


def test_sigkill_during_reconciles_leaves_no_duplicates(cluster, custom, core, batch, namespace, operator):
    names = [f"k{i}" for i in range(6)]
    for name in names:
        create(custom, namespace, finetunejob(name, sim=succeed_with({"status": "Succeeded", "artifactUri": f"file:///o/{name}"}, "3s")))
    rng = random.Random(7)
    for _ in range(6):
        time.sleep(rng.uniform(0.1, 0.8))
        operator.kill(signal.SIGKILL)
        operator.start()
    for name in names:
        st = wait_phase(custom, namespace, name, "Succeeded", timeout=90)
        assert st["result"]["artifactUri"] == f"file:///o/{name}"
    jobs = [j.metadata.name for j in _jobs(batch, namespace)]
    assert sorted(jobs) == sorted(f"{n}-ftj" for n in names), jobs
    assert len(_pods(core, namespace)) == len(names)


def test_progress_is_read_from_the_runners_metrics_endpoint(cluster, custom, core, namespace, operator):
    """The runner's own gauges, served on the pod's (loopback) address, end up in status.progress."""
    prometheus_client = pytest.importorskip("prometheus_client")
    metrics_module = pytest.importorskip("llmops_runners.metrics", reason="needs the finetune extra (torch)")
    create(custom, namespace, finetunejob("prog", sim={"outcome": "run"}))
    wait_phase(custom, namespace, "prog", "Running")
    pod = _pods(core, namespace, "llmops.dev/name=prog")[0]
    gauges = metrics_module.TrainingGauges("prog")
    gauges.step.set(30)
    gauges.total_steps.set(120)
    gauges.epoch.set(0.75)
    gauges.loss.set(1.5)
    gauges.learning_rate.set(1e-4)
    gauges.tokens_per_second.set(2500)
    server, thread = prometheus_client.start_http_server(9400, addr=pod.status.pod_ip, registry=gauges.registry)
    try:
        progress = wait_for(lambda: (status(custom, namespace, "prog").get("progress") or {}).get("step") == 30
                            and status(custom, namespace, "prog")["progress"], what="progress scraped")
    finally:
        server.shutdown()
    assert progress["totalSteps"] == 120 and progress["percent"] == "25%"
    assert progress["loss"] == 1.5 and progress["tokensPerSecond"] == 2500 and progress["epoch"] == 0.75
    assert re.fullmatch(r"\d+(h\d\dm|m\d\ds|s)", progress["eta"])
    listing = cluster.kubectl("get", "ftj", "prog", "-n", namespace).stdout
    assert "25%" in listing and "Running" in listing


def test_pods_refused_at_admission_are_reported(custom, namespace, operator):
    """The Job controller cannot create pods (here: a missing PriorityClass): status says why."""
    create(custom, namespace, finetunejob("noprio", sim={"outcome": "run"}, scheduling={"priorityClassName": "does-not-exist"}))
    st = wait_for(lambda: (s := status(custom, namespace, "noprio")) and (condition(s, "Running") or {}).get("reason") == "FailedCreate" and s,
                  what="FailedCreate reported")
    assert st["phase"] == "Pending" and "does-not-exist" in st["message"]


def test_disrupted_pod_restarts_the_group_without_counting(custom, core, batch, namespace, operator):
    """A preempted pod (DisruptionTarget) fails the Job through its podFailurePolicy; the retry is free."""
    create(custom, namespace, finetunejob("pre", sim={"outcome": "run"}, backoffLimit=0))
    wait_phase(custom, namespace, "pre", "Running")
    pod = _pods(core, namespace, "llmops.dev/name=pre")[0]
    now = pod.status.start_time.isoformat()
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
        "phase": "Failed",
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                        "message": "preempted by a higher-priority pod", "lastTransitionTime": now}],
    }})
    st = wait_for(lambda: (s := status(custom, namespace, "pre")).get("attempt") == 1 and s.get("phase") == "Running" and s,
                  timeout=60, what="second attempt running")
    assert st["restarts"] == 0
    assert [j.metadata.name for j in _jobs(batch, namespace)] == ["pre-ftj", "pre-ftj-r1"]
    assert "Disrupted" in [e.reason for e in events(core, namespace, "pre")]


def test_deadline_can_be_extended_while_running(custom, batch, namespace, operator):
    create(custom, namespace, finetunejob("ext", sim={"outcome": "run"}, activeDeadlineSeconds=600))
    wait_phase(custom, namespace, "ext", "Running")
    patch_spec(custom, namespace, "ext", {"activeDeadlineSeconds": 7200})
    wait_for(lambda: 7000 < (batch.read_namespaced_job("ext-ftj", namespace).spec.active_deadline_seconds or 0) <= 7200,
             what="Job deadline follows the spec")


def test_deletion_needs_no_operator(cluster, custom, core, batch, namespace, operator):
    """No finalizer: a FineTuneJob deleted while the operator is down goes, and its children with it."""
    create(custom, namespace, finetunejob("gone", sim={"outcome": "run"}))
    wait_phase(custom, namespace, "gone", "Running")
    assert not get_finalizers(custom, namespace, "gone")
    operator.kill(signal.SIGKILL)
    custom.delete_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs", "gone")
    wait_for(lambda: not custom.list_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs")["items"], what="object deleted")
    wait_for(lambda: not _jobs(batch, namespace), what="Job garbage-collected")


def get_finalizers(custom, namespace, name):
    return custom.get_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs", name)["metadata"].get("finalizers")


def test_restart_while_running_tells_no_false_story(custom, core, batch, namespace, operator):
    """After a restart the operator finds the running Job again: no second Job, no phase flapping, nothing to tell."""
    create(custom, namespace, finetunejob("steady", sim={"outcome": "run"}))
    wait_phase(custom, namespace, "steady", "Running")
    job_uid = batch.read_namespaced_job("steady-ftj", namespace).metadata.uid
    operator.kill(signal.SIGKILL)
    operator.start()
    phases = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        phases.add(status(custom, namespace, "steady")["phase"])
        time.sleep(0.1)
    assert phases == {"Running"}
    assert [j.metadata.uid for j in _jobs(batch, namespace)] == [job_uid]
    assert events(core, namespace, "steady") == []
