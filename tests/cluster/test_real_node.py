"""The real node: pods that really run, from locally built images, beside the simulated GPU nodes.

Every pod here is pinned to the real node and runs the Debian base image (python3, no ML stack),
so the tests need no runner image.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from kubernetes import client
from waiting import wait_for

from llmops.devcluster.images import BASE_IMAGE
from llmops.devcluster.node import NODE_NAME, REAL_NODE_LABEL

PIN = {REAL_NODE_LABEL: "true"}


@pytest.fixture(scope="module", autouse=True)
def real_node(cluster):
    if not cluster.has_real_node:
        pytest.skip("this machine cannot run the real node (see `llmops-devcluster up` output); simulated nodes only")


def pod(name: str, script: str, **spec) -> dict:
    container = {"name": "main", "image": BASE_IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["python3", "-u", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeSelector": PIN, "restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                 "containers": [container], **spec},
    }


def phase(core, namespace: str, name: str) -> str:
    return core.read_namespaced_pod(name, namespace).status.phase


def logs(core, namespace: str, name: str) -> str:
    """The pod's log so far; empty while its container is still being created."""
    try:
        return core.read_namespaced_pod_log(name, namespace) or ""
    except client.ApiException as exc:
        if exc.status == 400:  # "container ... is waiting to start"
            return ""
        raise


def finished(core, namespace: str, name: str, timeout: float = 60) -> client.V1Pod:
    return wait_for(lambda: (p := core.read_namespaced_pod(name, namespace)).status.phase in ("Succeeded", "Failed") and p,
                    timeout=timeout, what=f"pod {name} to finish")


def test_the_real_node_is_ready_beside_the_gpu_nodes(core):
    nodes = {n.metadata.name: n for n in core.list_node().items}
    real = nodes[NODE_NAME]
    assert real.metadata.labels[REAL_NODE_LABEL] == "true"
    assert any(c.type == "Ready" and c.status == "True" for c in real.status.conditions)
    # The same Kubernetes version as the control plane, a real runtime, no GPUs and no taint.
    assert real.status.node_info.kubelet_version == "v1.36.3"
    assert real.status.node_info.container_runtime_version.startswith("containerd://2.")
    assert "nvidia.com/gpu" not in real.status.allocatable
    assert not real.spec.taints
    gpu_nodes = [n for n in nodes.values() if n.metadata.labels.get("type") == "kwok"]
    assert gpu_nodes and all("nvidia.com/gpu" in n.status.allocatable for n in gpu_nodes)


def test_env_and_volumes_at_their_paths(cluster, core, namespace):
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cr3t"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"),
                                                                    data={"mode": "fast", "app.conf": "x=1\n"}))
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="work"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteOnce"], resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))
    script = """
import json, os, shutil
report = {
  "env": {k: os.environ.get(k) for k in ("TOKEN", "MODE", "POD_NAME", "POD_IP", "NODE_NAME", "MEM_LIMIT")},
  "secret": open("/etc/creds/token").read(),
  "config": open("/etc/settings/app.conf").read(),
  "shm_fs": [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == "/dev/shm"],
  "shm_size": shutil.disk_usage("/dev/shm").total,
}
open("/work/written-by-first-pod", "w").write("kept")
open("/dev/termination-log", "w").write(json.dumps(report))
"""
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
    ]
    mounts = [{"name": "creds", "mountPath": "/etc/creds"}, {"name": "settings", "mountPath": "/etc/settings"},
              {"name": "shm", "mountPath": "/dev/shm"}, {"name": "work", "mountPath": "/work"}]
    volumes = [{"name": "creds", "secret": {"secretName": "creds"}}, {"name": "settings", "configMap": {"name": "settings"}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
               {"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]
    first = pod("first", script, volumes=volumes,
                container={"env": env, "volumeMounts": mounts, "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}}})
    cluster.apply([{**first, "metadata": {**first["metadata"], "namespace": namespace}}])
    done = finished(core, namespace, "first")
    state = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", state
    report = json.loads(state.message)
    assert report["env"] == {"TOKEN": "s3cr3t", "MODE": "fast", "POD_NAME": "first", "POD_IP": done.status.pod_ip,
                             "NODE_NAME": NODE_NAME, "MEM_LIMIT": str(256 * 2**20)}
    assert report["secret"] == "s3cr3t" and report["config"] == "x=1\n"
    assert report["shm_fs"] == ["tmpfs"] and report["shm_size"] == 64 * 2**20

    # The claim's data outlives the pod: a second pod reads what the first wrote.
    second = pod("second", "print(open('/work/written-by-first-pod').read())",
                 volumes=[volumes[3]], container={"volumeMounts": [mounts[3]]})
    cluster.apply([{**second, "metadata": {**second["metadata"], "namespace": namespace}}])
    assert finished(core, namespace, "second").status.phase == "Succeeded"
    assert logs(core, namespace, "second").strip() == "kept"
    pvc = core.read_namespaced_persistent_volume_claim("work", namespace)
    assert pvc.status.phase == "Bound" and pvc.spec.storage_class_name == "local-path"  # the default class


def test_service_routes_to_a_ready_pod_only(cluster, core, namespace):
    # The server only becomes ready once /tmp/ready exists: until then the Service has no endpoint.
    server = pod("web", """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/ready" or os.path.exists("/tmp/ready")
        self.send_response(200 if ok else 503); self.end_headers(); self.wfile.write(b"hello from " + os.environ["HOSTNAME"].encode())
http.server.HTTPServer(("", 8080), H).serve_forever()
""", container={"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    cluster.apply([{**server, "metadata": {**server["metadata"], "namespace": namespace}}, service])
    running = wait_for(lambda: (p := core.read_namespaced_pod("web", namespace)).status.phase == "Running" and p, timeout=60)
    time.sleep(3)
    assert not core.read_namespaced_pod("web", namespace).status.container_statuses[0].ready
    # The host reaches the pod at its real IP (the operator scrapes runners this way).
    with urllib.request.urlopen(f"http://{running.status.pod_ip}:8080/", timeout=5) as resp:
        assert resp.read() == b"hello from web"

    cluster.kubectl("exec", "-n", namespace, "web", "--", "touch", "/tmp/ready")
    wait_for(lambda: core.read_namespaced_pod("web", namespace).status.container_statuses[0].ready, timeout=30, what="readiness")
    ip = core.read_namespaced_service("web", namespace).spec.cluster_ip
    # A ClusterIP lives in the node's network (kube-proxy's rules): ask from there.
    curl = ["python3", "-c", f"import urllib.request;print(urllib.request.urlopen('http://{ip}/', timeout=5).read().decode())"]
    answer = wait_for(lambda: (r := cluster.node.exec_in_netns(curl, capture_output=True, text=True)).returncode == 0 and r.stdout,
                      timeout=30, what="the Service to answer")
    assert answer.strip() == "hello from web"


def test_oom_killed_container_is_reported_as_such(cluster, core, namespace):
    hog = pod("hog", "b = bytearray(512 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('survived')",
              container={"resources": {"limits": {"memory": "64Mi"}}})
    cluster.apply([{**hog, "metadata": {**hog["metadata"], "namespace": namespace}}])
    done = finished(core, namespace, "hog")
    state = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Failed"
    assert (state.reason, state.exit_code) == ("OOMKilled", 137)


@pytest.mark.parametrize("handles_sigterm", [True, False], ids=["exits-on-sigterm", "ignores-sigterm"])
def test_deletion_within_the_grace_period(cluster, core, namespace, handles_sigterm):
    # PID 1 gets no default SIGTERM action: a process that does not handle it is killed at the grace period's end.
    script = ("import signal, sys, time\n"
              + ("signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n" if handles_sigterm else "")
              + "print('up', flush=True)\nwhile True: time.sleep(1)\n")
    sleeper = pod("sleeper", script, terminationGracePeriodSeconds=8)
    cluster.apply([{**sleeper, "metadata": {**sleeper["metadata"], "namespace": namespace}}])
    wait_for(lambda: logs(core, namespace, "sleeper").startswith("up"), timeout=60, what="the pod to start")
    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)

    def gone():
        try:
            core.read_namespaced_pod("sleeper", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=30, what="the pod to be deleted")
    took = time.monotonic() - started
    if handles_sigterm:
        assert took < 6, f"a pod that exits on SIGTERM took {took:.1f}s to go"
    else:
        assert 7 <= took < 20, f"a pod that ignores SIGTERM went after {took:.1f}s (grace period 8s)"


def test_logs_and_exec_reach_the_kubelet(cluster, core, namespace):
    talker = pod("talker", "import time\nprint('line one', flush=True)\ntime.sleep(300)")
    cluster.apply([{**talker, "metadata": {**talker["metadata"], "namespace": namespace}}])
    wait_for(lambda: "line one" in cluster.kubectl("logs", "-n", namespace, "talker", check=False).stdout, timeout=60, what="kubectl logs")
    out = cluster.kubectl("exec", "-n", namespace, "talker", "--", "python3", "-c", "import os; print(os.getuid(), open('/etc/hostname').read().strip())")
    assert out.stdout.split() == ["0", "talker"]


def test_gpu_pods_stay_on_simulated_nodes(cluster, core, namespace):
    gpu = pod("gpu", "raise SystemExit(1)", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}},
              tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    gpu["spec"].pop("nodeSelector")
    gpu["metadata"]["annotations"] = {"sim.llmops.dev/outcome": "run"}
    cluster.apply([{**gpu, "metadata": {**gpu["metadata"], "namespace": namespace}}])
    running = wait_for(lambda: (p := core.read_namespaced_pod("gpu", namespace)).status.phase == "Running" and p, timeout=30)
    assert running.spec.node_name.startswith("gpu-")
