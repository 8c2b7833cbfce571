"""Two local clusters on one machine keep out of each other's way; `down` leaves nothing behind; `up` after `down` works."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from waiting import wait_for

from llmops.devcluster.cluster import LocalCluster
from llmops.devcluster.images import BASE_IMAGE
from llmops.devcluster.node import NodeNetwork


@pytest.fixture(scope="module", autouse=True)
def real_node(cluster):
    if not cluster.has_real_node:
        pytest.skip("this machine cannot run the real node (see `llmops-devcluster up` output); simulated nodes only")


def run_pod(c: LocalCluster, name: str) -> str:
    """Run a pod to completion on the cluster's real node; returns what it printed."""
    c.kubectl("run", name, f"--image={BASE_IMAGE}", "--image-pull-policy=IfNotPresent", "--restart=Never",
              "--overrides", '{"spec": {"nodeSelector": {"llmops.dev/real-node": "true"}}}',
              "--command", "--", "python3", "-c", f"print('{name} ran')")
    wait_for(lambda: c.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}", check=False).stdout == "Succeeded",
             timeout=60, what=f"pod {name}")
    return c.kubectl("logs", name).stdout.strip()


def leftovers(root: Path, net: NodeNetwork) -> list[str]:
    found = []
    if net.netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        found.append(f"netns {net.netns}")
    if subprocess.run(["ip", "link", "show", net.host_veth], capture_output=True).returncode == 0:
        found.append(f"veth {net.host_veth}")
    if net.pod_cidr.split("/")[0] in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout:
        found.append(f"route {net.pod_cidr}")
    with open("/proc/self/mountinfo") as info:
        found += [f"mount {m}" for m in (line.split()[4] for line in info)
                  if m.startswith(str(root.resolve())) or m.startswith(str(net.runtime_dir))]
    if net.runtime_dir.exists():
        found.append(f"folder {net.runtime_dir}")
    memory = Path("/sys/fs/cgroup/memory") / net.cgroup_root.lstrip("/")
    if memory.exists():
        found.append(f"cgroup {memory}")
    return found


def test_a_second_cluster_keeps_apart_and_down_leaves_nothing(cluster, tmp_path):
    second = LocalCluster(tmp_path / "second")
    for round_ in (1, 2):  # up after down works
        second.up(log=lambda msg: None)
        try:
            mine, theirs = NodeNetwork(cluster.state().node_network), NodeNetwork(second.state().node_network)
            assert mine.netns != theirs.netns and mine.pod_cidr != theirs.pod_cidr and mine.cgroup_root != theirs.cgroup_root
            assert run_pod(second, f"second-{round_}") == f"second-{round_} ran"
        finally:
            second.down(quiet=True)
        assert leftovers(second.root, theirs) == []
        # The first cluster did not notice: its node still runs pods.
        assert run_pod(cluster, f"first-after-{round_}") == f"first-after-{round_} ran"
        cluster.kubectl("delete", "pod", f"first-after-{round_}", "--wait=false")
