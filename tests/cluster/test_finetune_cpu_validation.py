"""CPU FineTuneJobs (resources.gpusPerNode 0) against the real kube-apiserver: what it refuses, naming
the field, what it accepts, and that the runner pods the operator builds pass Pod Security `restricted`."""

from __future__ import annotations

import copy

import pytest
from kubernetes.client.exceptions import ApiException

from llmops.controllers.finetune.plan import Observed, plan
from llmops.runtime.conditions import now
from llmops.settings import Settings
from test_api_validation import FINETUNE, _create, _error, _refusal_problem, with_spec

pytestmark = pytest.mark.cluster

CPU = {"gpusPerNode": 0}

# (id, spec changes on top of gpusPerNode 0, field the error must name, words the message must contain)
REFUSED_ON_CPU = [
    ("qlora", {"method": "qlora"}, "spec.method", "method qlora needs a GPU"),
    ("auto-with-qlora-settings", {"method": "auto", "qlora": {"quantType": "nf4"}}, "spec.qlora", "qlora settings need a GPU"),
    ("bf16", {"training": {"precision": "bf16"}}, "spec.training.precision", "precision bf16 and fp16 need a GPU"),
    ("fp16", {"training": {"precision": "fp16"}}, "spec.training.precision", "precision bf16 and fp16 need a GPU"),
    ("offload-optimizer", {"deepspeed": {"zeroStage": 2, "offloadOptimizer": True}}, "spec.deepspeed.offloadOptimizer", "in host memory already"),
    ("offload-params", {"method": "full", "deepspeed": {"zeroStage": 3, "offloadParams": True}}, "spec.deepspeed.offloadParams", "in host memory already"),
    ("gpu-type", {"resources": {**CPU, "gpuType": "NVIDIA-H100-80GB-HBM3"}}, "spec.resources.gpuType", "gpuType needs gpusPerNode 1 or more"),
]


def cpu_job(**changes) -> dict:
    return with_spec(FINETUNE, **{"resources": dict(CPU), **changes})


@pytest.mark.parametrize("case_id,changes,field,words", REFUSED_ON_CPU, ids=[c[0] for c in REFUSED_ON_CPU])
def test_cpu_job_refuses_what_needs_a_gpu_naming_the_field(custom, namespace, case_id, changes, field, words):
    problem = _refusal_problem(custom, namespace, cpu_job(**changes), (422,), field, words)
    assert problem is None, problem


@pytest.mark.parametrize("changes", [
    {"method": "qlora", "training": {"precision": "bf16"}, "deepspeed": {"zeroStage": 2, "offloadOptimizer": True}},
    {"resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}, "training": {"precision": "fp16"}},
], ids=["qlora-bf16-offload-on-a-gpu", "gpu-type-fp16-on-a-gpu"])
def test_the_same_settings_with_gpus_are_accepted(custom, namespace, changes):
    _create(custom, namespace, with_spec(FINETUNE, **changes))


def test_cpu_lora_job_is_accepted_with_no_precision_filled_in(custom, namespace):
    created = _create(custom, namespace, cpu_job(method="lora"))
    spec = created["spec"]
    assert spec["resources"] == {"nodes": 1, "gpusPerNode": 0}
    # The schema must not default precision to bf16: that would refuse every CPU job that did not say fp32.
    assert "precision" not in spec["training"] and spec["training"]["scheduler"] == "cosine"


@pytest.mark.parametrize("changes", [
    {"method": "full", "training": {"precision": "fp32"}},
    {"method": "auto"},
    {"method": "prompt-tuning"},
    {"method": "full", "resources": {"nodes": 2, **CPU, "cpu": 4, "memory": "16Gi"}, "deepspeed": {"zeroStage": 3}},
], ids=["full-fp32", "auto", "prompt-tuning", "two-nodes-zero3"])
def test_cpu_jobs_that_can_run_are_accepted(custom, namespace, changes):
    created = _create(custom, namespace, cpu_job(**changes))
    assert created["spec"]["resources"]["gpusPerNode"] == 0


def _built_job(namespace: str, spec_changes: dict) -> dict:
    """The Job the operator would create for a FineTuneJob, as its pure plan builds it."""
    body = copy.deepcopy(with_spec(FINETUNE, **spec_changes))
    body["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001", generation=1)
    body["status"] = {}
    out = plan(Observed(body, [], [], now(), {"NVIDIA-H100-80GB-HBM3": 81559}), Settings())
    return next(c for c in out.create if c["kind"] == "Job")


def _restricted(core, namespace: str) -> None:
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})


@pytest.mark.parametrize("resources", [{"gpusPerNode": 0, "cpu": 2, "memory": "4Gi"}, {"gpusPerNode": 1}], ids=["cpu", "gpu"])
def test_runner_pods_pass_pod_security_restricted(core, batch, namespace, resources):
    _restricted(core, namespace)
    job = _built_job(namespace, {"resources": resources})
    batch.create_namespaced_job(namespace, job, dry_run="All")  # the Job itself is valid as built
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runner", **job["spec"]["template"]["metadata"]},
           "spec": job["spec"]["template"]["spec"]}
    core.create_namespaced_pod(namespace, pod, dry_run="All")  # Pod Security admission enforces on pods

    # The control: the same pod without its security contexts is refused, so the check above means something.
    bare = copy.deepcopy(pod)
    del bare["spec"]["securityContext"]
    del bare["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod(namespace, bare, dry_run="All")
    message, _ = _error(info.value)
    assert info.value.status == 403 and "violates PodSecurity" in message, message
