"""No drift: the examples applied as a GitOps tool does (server-side apply, field manager `gitops`,
as Argo CD does), reconciled by the operator, then applied again, change nothing.

The operator never writes `spec` or any field the user manages: after reconciliation every
example's spec is exactly what the API server alone makes of the manifest (the manifest plus the
CRD schema's defaults: a server-side dry run of the same apply, before the object exists, is the
reference), `gitops` is the only manager of any field under spec, the operator's own managers own
status (through the status subresource) and nothing else, and a second apply of every example
changes no `metadata.generation`, no spec and not the `gitops` manager's fields.

Every example under examples/ is applied unmodified, in one apply of the folder (as a GitOps tool
syncs it). The GPU ones (01-04) run to their ends on the simulated kwok GPU nodes, since kwok's
default is a Job pod that succeeds after a second: the test gives them what
examples/local/cluster-setup.yaml gives them on the local cluster (the `models` and `datasets`
claims, here bound to volumes of this namespace's own, the `hf-token` Secret and the `training`
PriorityClass). 01 and 02 succeed, 03 compresses 01's output and succeeds, 04 serves 03's model
with 01's adapter (its kwok replicas never answer HTTP, so the adapter stays Loading). The CPU ones
(05-08) need examples/local/tiny-inputs.yaml's claims and the runner images on the real node; they
are applied too and reach the states the operator reconciles them to without those: 06's pod
unschedulable (no `tiny-inputs` claim in the namespace), 07 and 05 waiting for their inputs, 08's
replica unschedulable.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_helpers import GROUP, VERSION
from waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MANAGER = "gitops"
PLURALS = {"FineTuneJob": "finetunejobs", "CompressionJob": "compressionjobs", "InferenceService": "inferenceservices"}
SETTLE_SECONDS = 6  # reconciles after the second apply (LLMOPS_PROGRESS_INTERVAL is 1 s in tests: several resyncs)


def _manifests() -> list[dict[str, Any]]:
    docs = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return [d for d in docs if d.get("apiVersion") == f"{GROUP}/{VERSION}" and d["kind"] in PLURALS]


def _apply(cluster, namespace: str, *extra: str) -> str:
    """`kubectl apply --server-side --field-manager=gitops` of the whole folder, as a GitOps tool syncs it."""
    return cluster.kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(EXAMPLES), *extra).stdout


def _json_documents(text: str) -> list[dict[str, Any]]:
    """kubectl -o json prints a List, or one document per object: both give the objects."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        while text[at].isspace():
            at += 1
        doc, at = decoder.raw_decode(text, at)
        found.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return found


@pytest.fixture
def example_setup(cluster, core, namespace):
    """What examples/local/cluster-setup.yaml gives the GPU examples, for this namespace: the claims
    bound to volumes of its own (a volume binds one claim, and other tests may apply the file), the
    hub token Secret and the PriorityClass."""
    setup = [d for d in yaml.safe_load_all((EXAMPLES / "local" / "cluster-setup.yaml").read_text()) if d]
    volumes = {d["metadata"]["name"]: d for d in setup if d["kind"] == "PersistentVolume"}
    created_volumes, created_class = [], False
    for doc in setup:
        doc = copy.deepcopy(doc)
        if doc["kind"] == "PersistentVolume":
            continue
        if doc["kind"] == "PersistentVolumeClaim":
            volume = copy.deepcopy(volumes[doc["spec"]["volumeName"]])
            volume["metadata"]["name"] = f"{namespace}-{doc['metadata']['name']}"[:63]
            volume["spec"]["claimRef"] = {"namespace": namespace, "name": doc["metadata"]["name"]}
            core.create_persistent_volume(volume)
            created_volumes.append(volume["metadata"]["name"])
            doc["spec"]["volumeName"] = volume["metadata"]["name"]
            core.create_namespaced_persistent_volume_claim(namespace, doc)
        elif doc["kind"] == "Secret":
            core.create_namespaced_secret(namespace, doc)
        elif doc["kind"] == "PriorityClass":
            scheduling = client.SchedulingV1Api(core.api_client)
            try:
                scheduling.create_priority_class(doc)
                created_class = True
            except ApiException as exc:
                if exc.status != 409:  # there already (the quickstart's, or another test's): use it
                    raise
        else:
            raise AssertionError(f"cluster-setup.yaml has a {doc['kind']} this test does not know how to set up")
    wait_for(lambda: all(c.status.phase == "Bound" for c in core.list_namespaced_persistent_volume_claim(namespace).items),
             timeout=60, what="the example claims bound")
    yield
    for name in created_volumes:
        core.delete_persistent_volume(name)
    if created_class:
        client.SchedulingV1Api(core.api_client).delete_priority_class("training")


def _get(custom, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)


def _reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("phase")) and status.get("observedGeneration") == obj["metadata"]["generation"]


# Where each example settles on this cluster (see the module's docstring): the test waits for it, so
# that the operator has made all its writes (children, every status transition) before the check.
SETTLED = {
    "tinyllama-support-lora": lambda s: s["phase"] == "Succeeded",
    "llama3-8b-full": lambda s: s["phase"] == "Succeeded",
    "tinyllama-support-w4a16": lambda s: s["phase"] == "Succeeded",
    "support-bot": lambda s: bool(s.get("modelUri")) and (s.get("readyReplicas") or 0) >= 1
                             and all(a.get("uri") for a in s.get("adapters") or [{}]),
    "tiny-cpu-lora": lambda s: s["phase"] == "Pending" and bool(s.get("jobName")),
    "tiny-cpu-int8": lambda s: s["phase"] == "Pending",
    "tiny-cpu": lambda s: s["phase"] == "Pending",
    "tiny-cpu-base": lambda s: s["phase"] in ("Loading", "Pending"),
}


def _settled(name: str, obj: dict[str, Any]) -> bool:
    return _reconciled(obj) and SETTLED.get(name, lambda s: True)(obj["status"])


def _gitops_entry(obj: dict[str, Any]) -> dict[str, Any]:
    entries = [e for e in obj["metadata"].get("managedFields") or [] if e["manager"] == MANAGER]
    assert len(entries) == 1 and entries[0]["operation"] == "Apply", obj["metadata"].get("managedFields")
    return entries[0]


def _others(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in obj["metadata"].get("managedFields") or [] if e["manager"] != MANAGER]


def _is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _is_subset(v, big[k]) for k, v in small.items())
    return small == big


def test_a_second_gitops_apply_of_every_example_after_reconciliation_changes_nothing(cluster, custom, namespace, example_setup, operator):
    manifests = _manifests()
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    assert {n for _, n in names} >= set(SETTLED), names  # 01-08 at least: every example of our kinds

    # The reference: what the API server alone makes of each manifest (schema defaults and all).
    dry_run = {(o["kind"], o["metadata"]["name"]): o
               for o in _json_documents(_apply(cluster, namespace, "--dry-run=server", "-o", "json")) if o["kind"] in PLURALS}
    assert set(dry_run) == names
    for doc in manifests:
        reference = dry_run[(doc["kind"], doc["metadata"]["name"])]
        assert _is_subset(doc["spec"], reference["spec"]), (doc["metadata"]["name"], doc["spec"], reference["spec"])

    _apply(cluster, namespace)
    for kind, name in sorted(names):
        wait_for(lambda: _settled(name, o := _get(custom, namespace, kind, name)) and o, timeout=120,
                 what=f"{kind} {name} reconciled and settled", on_timeout=lambda: json.dumps(_get(custom, namespace, kind, name).get("status"), indent=1))

    def check(obj: dict[str, Any], when: str) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        reference = dry_run[(kind, name)]
        where = f"{kind} {name} ({when})"
        # spec: the manifest plus the schema's defaults, nothing the operator added or changed.
        assert obj["spec"] == reference["spec"], where
        # metadata the user manages: no label, annotation or finalizer of the operator's (nor Kopf's).
        for field in ("labels", "annotations", "finalizers", "ownerReferences"):
            assert obj["metadata"].get(field) == reference["metadata"].get(field), (where, field, obj["metadata"].get(field))
        # Only `gitops` owns spec fields; every other manager writes status through its subresource, and nothing else.
        assert "f:spec" in _gitops_entry(obj)["fieldsV1"], where
        for entry in _others(obj):
            assert entry.get("subresource") == "status" and set(entry["fieldsV1"]) == {"f:status"}, (where, entry)
            assert entry["manager"] == "llmops-operator", (where, entry["manager"])  # its status writes name it
        assert _reconciled(obj), (where, obj.get("status"))

    before = {}
    for kind, name in sorted(names):
        obj = _get(custom, namespace, kind, name)
        check(obj, "after reconciliation")
        before[(kind, name)] = obj
        status = obj["status"]
        print(f"{kind} {name}: generation {obj['metadata']['generation']}, phase {status['phase']}: {status.get('message', '')}")
    print("managers besides gitops:", sorted({(e["manager"], e["operation"], e.get("subresource", "")) for o in before.values() for e in _others(o)}))
    assert any(_others(o) for o in before.values()), "the operator wrote no status at all?"

    _apply(cluster, namespace)
    time.sleep(SETTLE_SECONDS)
    for kind, name in sorted(names):
        after, old = _get(custom, namespace, kind, name), before[(kind, name)]
        check(after, "after the second apply")
        where = f"{kind} {name}"
        assert after["metadata"]["generation"] == old["metadata"]["generation"], where
        assert after["spec"] == old["spec"], where
        new_entry, old_entry = _gitops_entry(after), _gitops_entry(old)
        assert (new_entry["fieldsV1"], new_entry["apiVersion"]) == (old_entry["fieldsV1"], old_entry["apiVersion"]), where
        assert new_entry["time"] == old_entry["time"], f"{where}: the second apply was not a no-op for gitops"
