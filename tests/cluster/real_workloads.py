"""What the tests of real workloads on the real node share: claims, uploads, following a job."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubernetes import client
from waiting import wait_for

from llmops.devcluster.images import BASE_IMAGE
from llmops.devcluster.node import REAL_NODE_LABEL


def claim(core, namespace: str, name: str) -> None:
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"],
                                                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))


def upload(cluster, core, namespace: str, claim_name: str, files: dict[str, Path]) -> None:
    """Copy local files and folders onto a claim through a short-lived pod, as a user would."""
    loader = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"load-{claim_name}", "namespace": namespace},
        "spec": {"nodeSelector": {REAL_NODE_LABEL: "true"}, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": BASE_IMAGE, "command": ["sleep", "3600"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}]},
    }
    cluster.apply([loader])
    name = loader["metadata"]["name"]
    wait_for(lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running", timeout=60, what="the loader pod")
    for target, source in files.items():
        cluster.kubectl("cp", str(source), f"{namespace}/{name}:/data/{target}")
    cluster.kubectl("exec", "-n", namespace, name, "--", "chmod", "-R", "a+rwX", "/data")
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def volume_path(core, namespace: str, claim_name: str) -> Path:
    """Where the claim's local volume lives on this machine (the node is this machine)."""
    pv = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim(claim_name, namespace).spec.volume_name)
    source = pv.spec.host_path or pv.spec.local
    return Path(source.path)


def follow(read_status, core, namespace: str, name: str, timeout: float) -> list[tuple[float, dict]]:
    """Every status `read_status()` gave (with its second since the start) until the job is Succeeded or Failed."""
    start, timeline = time.monotonic(), []
    while time.monotonic() - start < timeout:
        st = read_status()
        if not timeline or st != timeline[-1][1]:
            timeline.append((round(time.monotonic() - start, 1), st))
        if st.get("phase") in ("Succeeded", "Failed"):
            return timeline
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish in {timeout}s:\n{describe(core, namespace, name, timeline)}")


def describe(core, namespace: str, name: str, timeline: list[tuple[float, dict]]) -> str:
    """What a person needs when this fails on a machine they cannot log into: phases over time, pods, events."""
    lines = [f"  {at:6.1f}s {st.get('phase')} progress={st.get('progress')}" for at, st in timeline]
    for pod in core.list_namespaced_pod(namespace, label_selector=f"llmops.dev/name={name}").items:
        states = [(c.name, c.state.to_dict(), c.restart_count) for c in pod.status.container_statuses or []]
        lines.append(f"  pod {pod.metadata.name} on {pod.spec.node_name} ip={pod.status.pod_ip} {pod.status.phase} {states}")
    lines += [f"  event {e.reason}: {e.message}" for e in core.list_namespaced_event(namespace).items]
    if timeline:
        lines.append(f"  last status: {json.dumps(timeline[-1][1])}")
    return "\n".join(lines)
