"""Shared fixtures: a real local control plane for the whole session, a namespace per test."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """etcd + kube-apiserver + controller-manager + scheduler + kwok GPU nodes, with our CRDs installed.

    Set LLMOPS_TEST_CLUSTER_DIR to reuse a cluster started with `llmops-devcluster up`.
    """
    from llmops.devcluster.cli import install_crds
    from llmops.devcluster.cluster import LocalCluster

    reuse = os.environ.get("LLMOPS_TEST_CLUSTER_DIR")
    local = LocalCluster(Path(reuse) if reuse else tmp_path_factory.mktemp("cluster"))
    started = time.monotonic()
    if not (reuse and local.running()):
        local.up(log=lambda msg: print(msg))
    try:
        install_crds(local, REPO / "crds")
    except BaseException:
        if not reuse:  # a set-up that fails after `up` must not leave a control plane running
            local.down(quiet=True)
        raise
    print(f"\ncontrol plane ready in {time.monotonic() - started:.1f}s ({local.server})")
    yield local
    if not reuse:
        local.down(quiet=True)


@pytest.fixture(scope="session")
def api_client(cluster):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="session")
def core(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def batch(api_client):
    from kubernetes import client

    return client.BatchV1Api(api_client)


@pytest.fixture
def namespace(core, request):
    """A fresh namespace whose default ServiceAccount exists (pods need it)."""
    from kubernetes import client

    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"default ServiceAccount of {name} never appeared (is the controller-manager running?)")
    yield name
    core.delete_namespace(name)
