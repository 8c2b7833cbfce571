"""CPU FineTuneJobs (resources.gpusPerNode 0) and the security of every runner pod, without a cluster."""

from __future__ import annotations

import json

import pytest

from llmops.api.finetune import FineTuneJobSpec
from llmops.controllers.finetune import builders as build
from llmops.controllers.finetune.plan import Observed, plan
from llmops.runtime.children import RunnerPod, resolve_location, runner_job
from llmops.settings import GPU_PRODUCT_LABEL, GPU_RESOURCE, Settings

from test_finetune_plan import NOW, SETTINGS, body, observe

CPU = {"gpusPerNode": 0, "cpu": 8, "memory": "32Gi"}


def first_plan(b):
    return plan(observe(b), SETTINGS)


def pod_spec(p):
    job = next(c for c in p.create if c["kind"] == "Job")
    return job["spec"]["template"]["spec"]


def container(p):
    return pod_spec(p)["containers"][0]


def env(p):
    return {e["name"]: e for e in container(p)["env"]}


def runner_config(p):
    job = next(c for c in p.create if c["kind"] == "Job")
    return json.loads(job["spec"]["template"]["metadata"]["annotations"]["llmops.dev/runner-config"])


def test_api_model_accepts_zero_gpus_and_still_refuses_negative():
    spec = FineTuneJobSpec.model_validate(body(resources={"gpusPerNode": 0})["spec"])
    assert spec.resources.gpus_per_node == 0
    with pytest.raises(ValueError):
        FineTuneJobSpec.model_validate(body(resources={"gpusPerNode": -1})["spec"])


def test_cpu_pod_requests_no_gpu_and_gets_no_gpu_toleration_or_selector():
    p = first_plan(body(resources=CPU))
    spec, resources = pod_spec(p), container(p)["resources"]
    assert GPU_RESOURCE not in resources["requests"] and GPU_RESOURCE not in resources["limits"]
    assert resources["requests"] == resources["limits"] == {"cpu": "8", "memory": "32Gi"}
    assert not any(t.get("key") == GPU_RESOURCE for t in spec.get("tolerations", []))
    assert GPU_PRODUCT_LABEL not in spec.get("nodeSelector", {})


def test_cpu_pod_keeps_the_users_own_scheduling():
    scheduling = {"nodeSelector": {"node.kubernetes.io/instance-type": "cpu-large"},
                  "tolerations": [{"key": "cpu-only", "operator": "Exists", "effect": "NoSchedule"}]}
    spec = pod_spec(first_plan(body(resources=CPU, scheduling=scheduling)))
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "cpu-large"}
    assert spec["tolerations"] == [{"key": "cpu-only", "operator": "Exists", "effect": "NoSchedule"}]


def test_gpu_pod_still_requests_tolerates_and_pins_its_gpus():
    p = first_plan(body(resources={"gpusPerNode": 2, "gpuType": "NVIDIA-H100-80GB-HBM3"}))
    spec = pod_spec(p)
    assert container(p)["resources"]["limits"][GPU_RESOURCE] == "2"
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"][GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"
    assert env(p)["NPROC_PER_NODE"]["value"] == "2" and "DS_ACCELERATOR" not in env(p)


@pytest.mark.parametrize("nodes", [1, 3])
def test_cpu_job_runs_one_process_per_node(nodes):
    e = env(first_plan(body(resources={**CPU, "nodes": nodes})))
    assert e["NPROC_PER_NODE"]["value"] == "1"
    assert e["WORLD_SIZE"]["value"] == str(nodes) and e["NNODES"]["value"] == str(nodes)
    assert e["DS_ACCELERATOR"]["value"] == "cpu"
    assert e["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": "trainer", "resource": "limits.cpu", "divisor": "1"}


def test_cpu_job_skips_the_vram_preflight_without_refusing():
    # No GPU memory observed at all: a GPU job could not be estimated, a CPU job needs none.
    p = plan(Observed(body(resources=CPU), [], [], NOW, {}), SETTINGS)
    fit = next(c for c in p.status["conditions"] if c["type"] == "ResourcesFit")
    assert fit["status"] == "Unknown" and fit["reason"] == "CPUOnly" and "gpusPerNode is 0" in fit["message"]
    assert "vramEstimate" not in p.status
    assert p.status["gpus"] == 0 and p.status["phase"] == "Pending" and p.status["selectedMethod"] == "lora"
    assert [c["kind"] for c in p.create] == ["Job"]
    assert not [e for e in p.events if e[0] == "Warning"]  # a CPU job is as asked: nothing to warn about


def test_cpu_job_with_a_model_too_big_for_any_gpu_is_not_refused():
    huge = body(resources=CPU, method="full", baseModel={"uri": "pvc://models/base", "parameterCount": 70_000_000_000})
    p = first_plan(huge)
    assert p.status["phase"] == "Pending" and [c["kind"] for c in p.create] == ["Job"]
    gpu = first_plan(body(method="full", baseModel={"uri": "pvc://models/base", "parameterCount": 70_000_000_000}))
    assert gpu.status["phase"] == "Failed"  # the same job on one H100 is refused by the pre-flight


def test_auto_picks_lora_on_cpu_never_qlora():
    # 13B parameters: on a 24 GB GPU auto reaches for qlora; on CPU it must not.
    big = {"uri": "pvc://models/base", "parameterCount": 13_000_000_000}
    p = first_plan(body(method="auto", baseModel=big, resources=CPU))
    assert p.status["selectedMethod"] == "lora" and "gpusPerNode is 0" in p.status["methodReason"]
    config = runner_config(p)
    assert config["method"] == "lora" and "qlora" not in config and config["lora"] == {}
    l4 = first_plan(body(method="auto", baseModel=big, resources={"gpusPerNode": 1, "gpuType": "NVIDIA-L4"}))
    assert l4.status["selectedMethod"] == "qlora"  # the contrast: on a 24 GB GPU auto does pick qlora


def test_unset_precision_is_fp32_on_cpu_and_bf16_on_gpu():
    assert runner_config(first_plan(body(resources=CPU)))["training"]["precision"] == "fp32"
    assert runner_config(first_plan(body()))["training"]["precision"] == "bf16"
    fp16 = body(training={"precision": "fp16"})
    assert runner_config(first_plan(fp16))["training"]["precision"] == "fp16"


# ---- every runner pod: non-root, read-only root filesystem, scratch at /tmp ----------------------

POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _assert_hardened(spec):
    assert POD_SECURITY.items() <= spec["securityContext"].items(), spec["securityContext"]
    assert spec["containers"][0]["securityContext"] == CONTAINER_SECURITY
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    tmp = mounts["/tmp"]
    assert volumes[tmp["name"]] == {"name": tmp["name"], "emptyDir": {}} and not tmp.get("readOnly")
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["HOME"] == "/tmp"  # the image's home is on the read-only root filesystem


@pytest.mark.parametrize("resources", [CPU, {"gpusPerNode": 8, "nodes": 2, "sharedMemory": "8Gi"}], ids=["cpu", "gpu"])
def test_finetune_pods_are_hardened(resources):
    _assert_hardened(pod_spec(first_plan(body(resources=resources))))


def test_any_kinds_runner_pod_is_hardened_and_jobs_do_not_share_one_dict():
    # runner_job is the skeleton compression and serving will use too: a bare RunnerPod gets the same.
    b = body(name="cj")
    b["kind"] = "CompressionJob"
    pod = RunnerPod(container="compressor", image="img", module="llmops_runners.compress", config={}, env=[], gpus=0,
                    locations=[resolve_location("pvc://models/base", "/mnt/pvc")])
    first = runner_job(b, "cj-cpj", pod, 0, "/mnt/pvc")["spec"]["template"]["spec"]
    _assert_hardened(first)
    assert "tolerations" not in first and GPU_RESOURCE not in str(first["containers"][0]["resources"])
    first["securityContext"]["runAsUser"] = 0
    first["containers"][0]["securityContext"]["capabilities"]["drop"].clear()
    second = runner_job(b, "cj-cpj", pod, 0, "/mnt/pvc")["spec"]["template"]["spec"]
    _assert_hardened(second)


def test_runner_config_never_changes_what_the_user_wrote():
    b = body(resources=CPU, training={"precision": "fp32", "maxSteps": 5})
    spec = FineTuneJobSpec.model_validate(b["spec"])
    config = build.runner_config(b, spec, "lora", Settings())
    assert config["training"]["maxSteps"] == 5 and config["training"]["precision"] == "fp32"
