"""Regression tests for defects of the first runtime, each against the real control plane and operator.

Each of these failed on the runtime before the rewrite (see the closing note of
the runtime issue): deadlines that stopped jobs at half their limit, a cache that
kept objects deleted while the watch was down, children refused by the API
server retried forever in silence, and children of a deleted namesake adopted.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml
from kubernetes import client

from conftest import OperatorProcess
from finetune_helpers import condition, create, events, finetunejob, status, succeed_with, wait_phase
from waiting import wait_for

pytestmark = pytest.mark.cluster


def _seconds(start: str, end: str) -> float:
    parse = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def test_deadline_is_the_whole_limit_not_half_of_it(custom, namespace, operator):
    """30 s of work: a 40 s limit lets it finish; a 20 s limit stops it at about 20 s (it used to be about 10 s)."""
    work = succeed_with({"status": "Succeeded", "artifactUri": "file:///o/x"}, "30s")
    create(custom, namespace, finetunejob("fits", sim=work, activeDeadlineSeconds=40))
    create(custom, namespace, finetunejob("over", sim=work, activeDeadlineSeconds=20))
    over = wait_phase(custom, namespace, "over", "Failed", timeout=90)
    assert condition(over, "Failed")["reason"] == "DeadlineExceeded"
    ran = _seconds(over["startTime"], over["completionTime"])
    assert 17 <= ran <= 27, f"stopped after {ran}s of a 20s limit"
    fits = wait_phase(custom, namespace, "fits", "Succeeded", timeout=90)
    assert fits["result"]["artifactUri"] == "file:///o/x"


def test_a_child_refused_as_invalid_fails_with_the_api_servers_words(custom, batch, namespace, operator):
    """An invalid pod label passes our schema but not the Job's: Failed at once, naming the field, no retry loop."""
    create(custom, namespace, finetunejob("badlabel", podMetadata={"labels": {"team": "not a label value!"}}))
    failed = wait_phase(custom, namespace, "badlabel", "Failed", timeout=30)
    cond = condition(failed, "Failed")
    assert cond["reason"] == "Rejected" and "spec.template.labels" in cond["message"] and "not a label value!" in cond["message"]
    assert batch.list_namespaced_job(namespace).items == []


def test_a_child_refused_by_quota_is_reported_and_retried_until_it_fits(custom, core, batch, namespace, operator):
    quota = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="no-jobs"), spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"}))
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(lambda: (core.read_namespaced_resource_quota("no-jobs", namespace).status.hard or {}).get("count/jobs.batch") == "0",
             what="quota in force")
    create(custom, namespace, finetunejob("quota", sim={"outcome": "run"}))
    refused = wait_for(lambda: (s := status(custom, namespace, "quota")) and (condition(s, "Running") or {}).get("reason") == "Forbidden" and s,
                       timeout=30, what="quota refusal in status")
    assert refused["phase"] == "Pending" and "exceeded quota" in refused["message"] and "retrying" in refused["message"]
    assert [e.reason for e in events(core, namespace, "quota")].count("Forbidden") == 1  # told once, not at every retry
    core.delete_namespaced_resource_quota("no-jobs", namespace)
    wait_phase(custom, namespace, "quota", "Running", timeout=90)


def test_children_of_a_deleted_namesake_are_replaced_never_adopted(custom, core, namespace, operator):
    """A FineTuneJob deleted and created again with the same name gets children owned by the new one."""
    spec = {"resources": {"nodes": 2, "gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}}
    create(custom, namespace, finetunejob("again", sim={"outcome": "run"}, **spec))
    wait_phase(custom, namespace, "again", "Running")
    # Hold the old headless Service so it outlives its owner (as a slow garbage collector would).
    core.patch_namespaced_service("again-ftj-workers", namespace, {"metadata": {"finalizers": ["llmops.test/hold"]}})
    custom.delete_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs", "again")
    wait_for(lambda: not custom.list_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs")["items"], what="old one gone")
    new_uid = create(custom, namespace, finetunejob("again", sim={"outcome": "run"}, **spec))["metadata"]["uid"]
    wait_for(lambda: core.read_namespaced_service("again-ftj-workers", namespace).metadata.deletion_timestamp, what="old Service being deleted")
    core.patch_namespaced_service("again-ftj-workers", namespace, {"metadata": {"finalizers": None}})

    def service_owner():
        try:
            service = core.read_namespaced_service("again-ftj-workers", namespace)
        except client.ApiException:
            return None
        return None if service.metadata.deletion_timestamp else service.metadata.owner_references[0].uid

    wait_for(lambda: service_owner() == new_uid, timeout=60, what="a new Service owned by the new FineTuneJob")
    wait_phase(custom, namespace, "again", "Running", timeout=60)


def _peer_entry(priority: int) -> dict:
    now = datetime.now(timezone.utc)
    return {"priority": priority, "lastseen": now.isoformat(), "lifetime": 120}


def test_objects_deleted_while_paused_leave_the_cache(cluster, custom, core, batch, namespace, tmp_path):
    """While peering pauses the operator its watches stop; on resume Kopf lists again without DELETED events.

    A Job deleted meanwhile must be noticed (its FineTuneJob recovers with a new one) and a FineTuneJob
    deleted meanwhile must leave the gauges; the cache used to keep both forever.
    """
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "llmops", "namespace": namespace}}))
    operator = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log", {"LLMOPS_PEERING_PRIORITY": "10"})
    operator.standalone, operator.verbose = False, True
    operator.start()
    try:
        for name in ("keep", "drop"):
            create(custom, namespace, finetunejob(name, sim={"outcome": "run"}))
        for name in ("keep", "drop"):
            wait_phase(custom, namespace, name, "Running")
        old_job = batch.read_namespaced_job("keep-ftj", namespace).metadata.uid
        peering = {"status": {"ghost-peer": _peer_entry(1000)}}
        custom.patch_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "llmops", peering)
        wait_for(lambda: "Pausing operations" in operator.log_tail(10**6), timeout=30, what="operator pauses")
        batch.delete_namespaced_job("keep-ftj", namespace, propagation_policy="Background")
        custom.delete_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, "finetunejobs", "drop")
        wait_for(lambda: not [j for j in batch.list_namespaced_job(namespace).items if j.metadata.uid == old_job], what="Job gone")
        custom.patch_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "llmops", {"status": {"ghost-peer": None}})
        wait_for(lambda: "Resuming operations" in operator.log_tail(10**6), timeout=60, what="operator resumes")
        try:
            new_job = wait_for(lambda: next((j.metadata.uid for j in batch.list_namespaced_job(namespace).items
                                             if j.metadata.name == "keep-ftj" and j.metadata.uid != old_job), None),
                               timeout=60, what="a new Job for the FineTuneJob whose Job vanished")
        except AssertionError as exc:
            ours = "\n".join(line for line in operator.log_tail(10**7).splitlines() if "llmops" in line and "kopf" not in line)
            raise AssertionError(f"{exc}\noperator log:\n{ours[-12000:]}") from None
        assert new_job
        wait_phase(custom, namespace, "keep", "Running", timeout=60)
        wait_for(lambda: 'name="drop"' not in operator.metrics() and 'name="keep",namespace' in operator.metrics(), timeout=30,
                 what="the deleted FineTuneJob left the gauges")
    finally:
        operator.kill()


def test_a_status_write_from_an_old_copy_never_clobbers_a_newer_one(cluster, custom, namespace):
    """The runtime writes status with the resourceVersion it planned from: a write based on an older copy is refused."""
    from llmops.runtime.kube import Conflict, Kube
    from llmops.runtime.resources import of_kind
    from llmops import api
    from kubernetes import config

    kube = Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    resource = of_kind(api.FINETUNE)
    seen = create(custom, namespace, finetunejob("racy"))
    newer = kube.patch_status(resource, namespace, "racy", {"phase": "Running", "message": "another writer"}, seen["metadata"]["resourceVersion"])
    assert newer["status"]["phase"] == "Running"
    with pytest.raises(Conflict):
        kube.patch_status(resource, namespace, "racy", {"phase": "Pending", "message": "from the old copy"}, seen["metadata"]["resourceVersion"])
    assert status(custom, namespace, "racy")["message"] == "another writer"


def test_children_that_follow_the_spec_are_server_side_applied(cluster, custom, core, namespace):
    """Plan.apply: created with our field manager, left alone while unchanged, updated when it changes,
    and a namesake owned by another UID is deleted rather than adopted."""
    from kubernetes import config

    from llmops.controllers import CONTROLLERS
    from llmops.runtime import metrics
    from llmops.runtime.children import metadata
    from llmops.runtime.controller import Runtime
    from llmops.runtime.kube import Kube
    from llmops.runtime.workqueue import RetryLater
    from llmops.settings import Settings

    runtime = Runtime(CONTROLLERS, Settings(), kube=Kube(config.new_client_from_config(config_file=str(cluster.kubeconfig))), namespaces=[namespace])
    owner = create(custom, namespace, finetunejob("owner"))
    uid = owner["metadata"]["uid"]

    def built(value):
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(owner, "owner-ftj-settings"), "data": {"value": value}}

    def writes():
        return sum(s.value for m in metrics.API_WRITES.collect() for s in m.samples if s.name.endswith("_total"))

    runtime._apply(built("one"), uid)
    applied = core.read_namespaced_config_map("owner-ftj-settings", namespace)
    assert applied.data == {"value": "one"} and applied.metadata.owner_references[0].uid == uid
    assert [(m.manager, m.operation) for m in applied.metadata.managed_fields] == [("llmops-operator", "Apply")]
    before = writes()
    runtime._apply(built("one"), uid)
    assert writes() == before  # unchanged: no request at all
    runtime._apply(built("two"), uid)
    assert core.read_namespaced_config_map("owner-ftj-settings", namespace).data == {"value": "two"}

    with pytest.raises(RetryLater):
        runtime._apply(built("three"), "the-uid-of-a-newer-namesake")
    wait_for(lambda: "owner-ftj-settings" not in [c.metadata.name for c in core.list_namespaced_config_map(namespace).items],
             what="the foreign ConfigMap deleted")
    runtime.stop()
