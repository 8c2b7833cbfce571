"""The real scheduler places GPU pods on the simulated nodes, and kwok plays their lifecycle."""

from __future__ import annotations

import pytest
from kubernetes import client

from waiting import wait_for

pytestmark = pytest.mark.cluster

GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def gpu_pod(name: str, gpus: int, annotations: dict | None = None, node_selector: dict | None = None) -> client.V1Pod:
    limits = {"nvidia.com/gpu": str(gpus)}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, annotations=annotations),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="main", image="runner:test", resources=client.V1ResourceRequirements(limits=limits, requests=limits))],
            tolerations=[GPU_TOLERATION],
            node_selector=node_selector,
        ),
    )


def test_nodes_advertise_gpus_and_gfd_labels(core):
    nodes = [n for n in core.list_node().items if n.metadata.labels.get("type") == "kwok"]  # not the real CPU node
    assert len(nodes) >= 4
    for node in nodes:
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"].startswith("NVIDIA-")
        assert int(node.metadata.labels["nvidia.com/gpu.memory"]) > 20000
        assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints)


def test_eight_gpu_pod_runs_on_a_gpu_node(core, namespace):
    core.create_namespaced_pod(namespace, gpu_pod("eight", 8, node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}))
    pod = wait_for(lambda: (p := core.read_namespaced_pod("eight", namespace)).status.phase == "Running" and p, what="pod Running")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod.status.container_statuses[0].state.running is not None


def test_too_many_gpus_stays_pending_unschedulable(core, namespace):
    core.create_namespaced_pod(namespace, gpu_pod("greedy", 9))

    def unschedulable():
        pod = core.read_namespaced_pod("greedy", namespace)
        conds = [c for c in (pod.status.conditions or []) if c.type == "PodScheduled"]
        return conds and conds[0].status == "False" and conds[0].reason == "Unschedulable" and (pod, conds[0])

    pod, cond = wait_for(unschedulable, what="PodScheduled=False/Unschedulable")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    assert "nvidia.com/gpu" in cond.message  # the scheduler names the missing resource


def test_pod_without_toleration_avoids_tainted_gpu_nodes(core, namespace):
    pod = gpu_pod("no-toleration", 1)
    pod.spec.tolerations = None
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: any(
            c.type == "PodScheduled" and c.reason == "Unschedulable" and "taint" in (c.message or "")
            for c in (core.read_namespaced_pod("no-toleration", namespace).status.conditions or [])
        ),
        what="untolerated taint reported",
    )


def _job(name: str, annotations: dict) -> client.V1Job:
    template = gpu_pod(name, 1, annotations)
    template.spec.restart_policy = "Never"
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(metadata=template.metadata, spec=template.spec)),
    )


def test_simulated_job_pods_succeed_or_fail_as_annotated(batch, core, namespace):
    batch.create_namespaced_job(namespace, _job("ok", {"sim.llmops.dev/duration": "500ms", "sim.llmops.dev/message": '{"status":"Succeeded"}'}))
    batch.create_namespaced_job(namespace, _job("bad", {"sim.llmops.dev/outcome": "fail", "sim.llmops.dev/exit-code": "2", "sim.llmops.dev/message": "dataset missing"}))

    def finished(name, cond_type):
        job = batch.read_namespaced_job(name, namespace)
        return any(c.type == cond_type and c.status == "True" for c in (job.status.conditions or []))

    wait_for(lambda: finished("ok", "Complete"), what="Job ok Complete")
    wait_for(lambda: finished("bad", "Failed"), what="Job bad Failed")
    pods = {p.metadata.labels["job-name"]: p for p in core.list_namespaced_pod(namespace).items}
    ok_state = pods["ok"].status.container_statuses[0].state.terminated
    bad_state = pods["bad"].status.container_statuses[0].state.terminated
    assert (ok_state.exit_code, ok_state.message) == (0, '{"status":"Succeeded"}')
    assert (bad_state.exit_code, bad_state.message) == (2, "dataset missing")
