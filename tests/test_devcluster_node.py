"""When the machine cannot run the real node, `up` says why in one line and goes on with simulated nodes."""

from __future__ import annotations

import pytest

from llmops.devcluster import cluster, node


def test_not_root_is_a_one_line_reason(monkeypatch):
    monkeypatch.setattr(node.platform, "system", lambda: "Linux")
    monkeypatch.setattr(node.os, "geteuid", lambda: 1000)
    reason = node.unsupported_reason()
    assert reason and "root" in reason and "--no-real-node" in reason and "\n" not in reason


def test_not_linux_is_a_one_line_reason(monkeypatch):
    monkeypatch.setattr(node.platform, "system", lambda: "Darwin")
    assert node.unsupported_reason() == "a real node needs Linux (this is Darwin)"


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr(node.platform, "system", lambda: "Linux")
    monkeypatch.setattr(node.os, "geteuid", lambda: 0)
    monkeypatch.setattr(node.shutil, "which", lambda tool: None if tool == "runc" else f"/usr/bin/{tool}")
    reason = node.unsupported_reason()
    assert reason and "runc" in reason and "setup.sh" in reason


@pytest.mark.parametrize("value, wanted", [(None, True), ("1", True), ("0", False), ("off", False), ("false", False)])
def test_llmops_real_node_switch(monkeypatch, value, wanted):
    if value is None:
        monkeypatch.delenv("LLMOPS_REAL_NODE", raising=False)
    else:
        monkeypatch.setenv("LLMOPS_REAL_NODE", value)
    assert cluster.real_node_wanted() is wanted


def test_a_cluster_that_does_not_want_the_node_claims_no_network(tmp_path):
    local = cluster.LocalCluster(tmp_path, real_node=False)
    state = cluster.ClusterState(1, 2, 3, 4)
    messages = []
    assert local._claim_node_network(state, messages.append) is None
    assert state.node_network is None and state.apiserver_host == "127.0.0.1" and messages == []


def test_networks_of_different_indexes_do_not_overlap():
    nets = [node.NodeNetwork(i) for i in range(3)]
    assert len({n.pod_cidr for n in nets}) == 3 and len({n.host_ip for n in nets}) == 3
    assert all(len(n.host_veth) <= 15 for n in (node.NodeNetwork(node.MAX_NETWORKS - 1),))  # IFNAMSIZ
