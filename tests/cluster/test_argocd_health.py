"""The Argo CD health checks (argocd/health/*.lua, installed by argocd/argocd-cm.yaml), evaluated by
Argo CD itself: the `argocd` CLI built from the Go module proxy (`python -m llmops.devcluster.build
argocd`; scripts/setup.sh runs it) runs `argocd admin settings resource-overrides health` on each
object exactly as read from the API server, in the states the operator drives it into (kwok plays
the pods): success, progress, failure, suspension, waiting for input, and a status behind the spec.

A status behind the spec is real too: the operator is stopped, the spec patched, and the object
read back (its `metadata.generation` moved on, its `status.observedGeneration` did not).

Also here: the Applications in argocd/applications/ parse, and their sync waves (and the examples'
own) put the chart before the pipeline and every input before what reads it.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_helpers import GROUP, VERSION, finetunejob, succeed_with
from finetune_helpers import create as create_finetunejob
from finetune_helpers import wait_phase as wait_finetune_phase
from test_compression_operator import REPORT, compressionjob
from test_compression_operator import create as create_compressionjob
from test_compression_operator import wait_phase as wait_compression_phase
from test_inference_operator import create as create_service
from test_inference_operator import service
from test_inference_operator import wait_phase as wait_service_phase
from waiting import wait_for

from llmops import crdgen

# The first test builds the CLI if setup.sh has not (a cold build compiles Argo CD: many minutes).
pytestmark = pytest.mark.timeout(3600)
# Pods run (kwok) long enough for a status to be read, and Argo CD asked, before they end.
RUN = "8s"

REPO = Path(__file__).resolve().parents[2]
ARGOCD_CM = REPO / "argocd" / "argocd-cm.yaml"
KINDS = {"FineTuneJob": "finetunejobs", "CompressionJob": "compressionjobs", "InferenceService": "inferenceservices"}
WAVE = "argocd.argoproj.io/sync-wave"
_files = itertools.count()


@pytest.fixture(scope="session")
def argocd() -> Path:
    from llmops.devcluster.build import ensure_argocd

    return ensure_argocd(log=print)


def argocd_health(argocd: Path, obj: dict[str, Any], folder: Path) -> tuple[str, str]:
    """(STATUS, MESSAGE) as Argo CD's own evaluator gives them for `obj`, with argocd-cm.yaml's scripts."""
    path = folder / f"{obj['kind']}-{obj['metadata']['name']}-{next(_files)}.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    proc = subprocess.run([str(argocd), "admin", "settings", "resource-overrides", "health", str(path),
                           "--argocd-cm-path", str(ARGOCD_CM), "--loglevel", "error"],
                          capture_output=True, text=True, timeout=120)
    found = re.fullmatch(r"STATUS: (\w+)\nMESSAGE: (.*)\n", proc.stdout, re.DOTALL)
    assert proc.returncode == 0 and found, f"argocd exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\nfor {path}"
    return found.group(1), found.group(2)


def live(custom, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, KINDS[kind], name)


def stale(custom, operator, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The object after a spec change the operator has not seen: it is stopped first."""
    before = live(custom, namespace, kind, name)
    operator.kill()
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, KINDS[kind], name, {"spec": spec})
    after = live(custom, namespace, kind, name)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["status"]["observedGeneration"] == before["metadata"]["generation"]
    return after


FT_REPORT = {"status": "Succeeded", "artifactUri": "file:///output/tuned", "metrics": {"trainLoss": 0.4}}
BAD_INPUT = {"outcome": "fail", "exit-code": "2", "duration": "1s",
             "message": json.dumps({"status": "Failed", "reason": "InvalidInput", "message": "Dataset record 2 is not JSON."})}


@pytest.mark.cluster
def test_finetunejob(custom, namespace, operator, argocd, tmp_path):
    def health(name: str) -> tuple[str, str]:
        return argocd_health(argocd, live(custom, namespace, "FineTuneJob", name), tmp_path)

    # Not reconciled yet: what the API server answers the create with (no status).
    created = create_finetunejob(custom, namespace, finetunejob("tuned", sim=succeed_with(FT_REPORT, RUN)))
    assert "status" not in created
    assert argocd_health(argocd, created, tmp_path) == ("Progressing", "waiting for the operator to report a status")
    create_finetunejob(custom, namespace, finetunejob("starting", sim={"start-delay": "600s"}))
    create_finetunejob(custom, namespace, finetunejob("broken", sim=BAD_INPUT))
    create_finetunejob(custom, namespace, finetunejob("held", sim=succeed_with(FT_REPORT), suspend=True))

    wait_finetune_phase(custom, namespace, "tuned", "Running")
    assert health("tuned") == ("Progressing", "Running: 1 of 1 pods running")
    wait_finetune_phase(custom, namespace, "starting", "Pending")
    assert health("starting") == ("Progressing", "Pending: created Job starting-ftj (attempt 0); waiting for its pods")

    succeeded = wait_finetune_phase(custom, namespace, "tuned", "Succeeded")
    status, message = health("tuned")
    assert status == "Healthy" and message == succeeded["message"] and "file:///output/tuned" in message

    wait_finetune_phase(custom, namespace, "broken", "Failed")
    status, message = health("broken")
    assert status == "Degraded" and message.startswith("InvalidInput: ") and "Dataset record 2 is not JSON." in message

    wait_finetune_phase(custom, namespace, "held", "Suspended")
    assert health("held") == ("Suspended", "spec.suspend is true: no pods run")
    # Suspending a job under way (its pod still starting): Suspended as soon as the spec says so, as
    # Argo CD shows a paused Deployment, then in the operator's words.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "starting", {"spec": {"suspend": True}})
    assert health("starting")[0] == "Suspended"
    wait_finetune_phase(custom, namespace, "starting", "Suspended")
    assert health("starting") == ("Suspended", "spec.suspend is true: no pods run")

    behind = stale(custom, operator, namespace, "FineTuneJob", "tuned", {"backoffLimit": 5})
    assert behind["status"]["phase"] == "Succeeded"  # a verdict of the old spec: not Healthy for the new one yet
    assert argocd_health(argocd, behind, tmp_path) == (
        "Progressing", "waiting for the operator to observe generation 2 (the status is of generation 1)")


@pytest.mark.cluster
def test_compressionjob(custom, namespace, operator, argocd, tmp_path):
    def health(name: str) -> tuple[str, str]:
        return argocd_health(argocd, live(custom, namespace, "CompressionJob", name), tmp_path)

    create_compressionjob(custom, namespace, compressionjob("small", succeed_with(REPORT, RUN), model={"fineTuneJob": {"name": "tuned"}}))
    wait_for(lambda: live(custom, namespace, "CompressionJob", "small").get("status"), what="a status")
    assert health("small") == ("Progressing", "WaitingForInput: FineTuneJob tuned does not exist yet; waiting for it")
    create_finetunejob(custom, namespace, finetunejob("tuned", sim=succeed_with(FT_REPORT, RUN)))
    wait_finetune_phase(custom, namespace, "tuned", "Running")
    wait_for(lambda: "(it is Running)" in health("small")[1], what="the CompressionJob to wait for the running FineTuneJob")
    assert health("small") == ("Progressing", "WaitingForInput: waiting for FineTuneJob tuned to succeed (it is Running)")

    wait_compression_phase(custom, namespace, "small", "Running", timeout=60)
    assert health("small") == ("Progressing", "Running: 1 of 1 pods running")
    succeeded = wait_compression_phase(custom, namespace, "small", "Succeeded")
    status, message = health("small")
    assert status == "Healthy" and message == succeeded["message"] and "file:///out/small" in message

    gate = {**REPORT["qualityGate"], "after": 9.5, "drop": 3.75, "passed": False}
    words = "quality gate failed: perplexity went from 2 to 9.5, a drop of 375.00%, more than maxAccuracyDrop 2.00%"
    report = {**REPORT, "status": "Failed", "reason": "QualityGateFailed", "message": words, "qualityGate": gate}
    create_compressionjob(custom, namespace, compressionjob("gated", {"outcome": "fail", "exit-code": "2", "duration": "1s",
                                                                      "message": json.dumps(report)}))
    failed = wait_compression_phase(custom, namespace, "gated", "Failed")
    assert words in failed["message"]  # after the pod's name
    assert health("gated") == ("Degraded", f"QualityGateFailed: {failed['message']}")

    create_compressionjob(custom, namespace, compressionjob("never", model={"fineTuneJob": {"name": "broken"}}))
    create_finetunejob(custom, namespace, finetunejob("broken", sim=BAD_INPUT))
    wait_compression_phase(custom, namespace, "never", "Failed")
    status, message = health("never")
    assert status == "Degraded" and message.startswith("InputFailed: the input FineTuneJob broken failed: ") and "record 2" in message

    create_compressionjob(custom, namespace, compressionjob("held", succeed_with(REPORT), suspend=True))
    wait_compression_phase(custom, namespace, "held", "Suspended")
    assert health("held") == ("Suspended", "spec.suspend is true: no pods run")

    behind = stale(custom, operator, namespace, "CompressionJob", "small", {"backoffLimit": 5})
    assert argocd_health(argocd, behind, tmp_path) == (
        "Progressing", "waiting for the operator to observe generation 2 (the status is of generation 1)")


@pytest.mark.cluster
def test_inferenceservice(custom, namespace, operator, argocd, tmp_path):
    def health(name: str) -> tuple[str, str]:
        return argocd_health(argocd, live(custom, namespace, "InferenceService", name), tmp_path)

    created = create_service(custom, namespace, service("chat"))
    assert argocd_health(argocd, created, tmp_path) == ("Progressing", "waiting for the operator to report a status")
    # kwok holds this one's replica Pending (not ready) for ten minutes: Loading.
    create_service(custom, namespace, service("slow", podMetadata={"annotations": {"sim.llmops.dev/start-delay": "600s"}}))
    # Waiting for a CompressionJob that does not exist yet, then for one that runs, then that fails.
    create_service(custom, namespace, service("waiting", model={"compressionJob": {"name": "small"}}))
    create_service(custom, namespace, service("gated", model={"compressionJob": {"name": "gated"}}))

    ready = wait_service_phase(custom, namespace, "chat", "Ready", readyReplicas=1)
    assert health("chat") == ("Healthy", ready["message"]) and ready["message"] == "1/1 replicas serving chat"
    wait_service_phase(custom, namespace, "slow", "Loading")
    loading = live(custom, namespace, "InferenceService", "slow")  # why, in the Deployment's words or ours: it changes
    assert loading["status"]["phase"] == "Loading" and loading["status"]["readyReplicas"] == 0
    assert argocd_health(argocd, loading, tmp_path) == ("Progressing", f"Loading: {loading['status']['message']}")

    wait_service_phase(custom, namespace, "waiting", "Pending")
    assert health("waiting") == ("Progressing", "WaitingForModel: CompressionJob small does not exist yet; waiting for it")
    fail = {"outcome": "fail", "exit-code": "2", "duration": RUN,
            "message": json.dumps({"status": "Failed", "reason": "InvalidInput", "message": "Calibration record 5 is not JSON."})}
    create_compressionjob(custom, namespace, compressionjob("small", fail))
    wait_compression_phase(custom, namespace, "small", "Running")
    wait_for(lambda: "(it is Running)" in health("waiting")[1], what="the service to wait for the running CompressionJob")
    assert health("waiting") == ("Progressing", "WaitingForModel: waiting for CompressionJob small to succeed (it is Running)")
    wait_service_phase(custom, namespace, "waiting", "Failed", timeout=60)
    status, message = health("waiting")
    assert status == "Degraded" and message.startswith("InputFailed: CompressionJob small failed: ") and "record 5" in message

    gate = {**REPORT["qualityGate"], "after": 9.5, "drop": 3.75, "passed": False}
    report = {**REPORT, "status": "Failed", "reason": "QualityGateFailed", "message": "quality gate failed", "qualityGate": gate}
    create_compressionjob(custom, namespace, compressionjob("gated", {"outcome": "fail", "exit-code": "2", "duration": "1s",
                                                                      "message": json.dumps(report)}))
    wait_service_phase(custom, namespace, "gated", "Failed", timeout=60)
    assert health("gated") == ("Degraded", "QualityGateFailed: CompressionJob gated failed its quality gate "
                                           "(perplexity drop 375.00% > 2.00%): its model is never served")

    behind = stale(custom, operator, namespace, "InferenceService", "chat", {"replicas": 2})
    assert behind["status"]["phase"] == "Ready"
    assert argocd_health(argocd, behind, tmp_path) == (
        "Progressing", "waiting for the operator to observe generation 2 (the status is of generation 1)")


@pytest.mark.parametrize("kind", KINDS)
def test_odd_statuses_give_a_verdict_not_a_lua_error(argocd, tmp_path, kind):
    """What no operator of this version writes, but a hand or an older one may: no Lua error (exit 20)."""
    base = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "odd", "generation": 3}, "spec": {}}
    cases = [
        ({}, "Progressing"),  # no status
        ({"status": {}}, "Progressing"),
        ({"status": {"phase": "Failed", "observedGeneration": 3}}, "Degraded"),  # no message, no conditions
        ({"status": {"phase": "Failed", "observedGeneration": 3, "conditions": []}}, "Degraded"),
        ({"metadata": {"name": "odd"}, "status": {"phase": "Pending"}}, "Progressing"),  # no generation
    ]
    if kind == "CompressionJob":  # a failed gate is never Healthy, whatever the phase says
        cases.append(({"status": {"phase": "Succeeded", "observedGeneration": 3, "qualityGate": {"passed": False}}}, "Degraded"))
    for extra, wanted in cases:
        status, message = argocd_health(argocd, {**base, **extra}, tmp_path)
        assert status == wanted, (extra, status, message)


def test_argocd_cm_carries_each_script_as_it_is():
    data = yaml.safe_load(ARGOCD_CM.read_text())
    assert data["metadata"]["name"] == "argocd-cm"  # the only name `--argocd-cm-path` and Argo CD read
    for kind in KINDS:
        assert data["data"][f"resource.customizations.health.{GROUP}_{kind}"] == (REPO / "argocd" / "health" / crdgen.HEALTH_SCRIPTS[kind]).read_text()
    values = yaml.safe_load((REPO / "argocd" / "argo-cd-values.yaml").read_text())
    assert values["configs"]["cm"] == data["data"]


def _wave(obj: dict[str, Any]) -> int:
    return int(((obj.get("metadata") or {}).get("annotations") or {}).get(WAVE, "0"))


def test_applications_sync_the_chart_first_and_every_input_before_its_readers():
    apps = {a["metadata"]["name"]: a for f in sorted((REPO / "argocd" / "applications").glob("*.yaml"))
            for a in yaml.safe_load_all(f.read_text()) if a}
    assert set(apps) == {"llmops", "llmops-pipeline"}
    assert all(a["apiVersion"] == "argoproj.io/v1alpha1" and a["kind"] == "Application" for a in apps.values())
    chart, pipeline = apps["llmops"], apps["llmops-pipeline"]
    assert _wave(chart) < _wave(pipeline)
    assert chart["spec"]["source"]["path"] == "charts/llmops" and "ServerSideApply=true" in chart["spec"]["syncPolicy"]["syncOptions"]
    assert not chart["spec"]["source"]["helm"].get("skipCrds")
    crds = {d["spec"]["names"]["kind"] for p in (REPO / chart["spec"]["source"]["path"] / "crds").glob("*.yaml")
            for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "CustomResourceDefinition"}
    assert set(KINDS) <= crds  # the chart's Helm crds/: in its Application, applied before anything uses them

    # What the pipeline syncs: the llmops.dev objects of its folder (not recursing into examples/local/).
    source = pipeline["spec"]["source"]
    assert source["path"] == "examples" and source["directory"]["recurse"] is False
    objects = [d for f in sorted((REPO / source["path"]).glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    ours = {(d["kind"], d["metadata"]["name"]): d for d in objects if d.get("apiVersion") == f"{GROUP}/{VERSION}"}
    assert {kind for kind, _ in ours} == set(KINDS)
    assert all(WAVE in d["metadata"].get("annotations", {}) for d in ours.values())
    for kind_before, kind_after in (("FineTuneJob", "CompressionJob"), ("CompressionJob", "InferenceService")):
        assert max(_wave(d) for (k, _), d in ours.items() if k == kind_before) < min(_wave(d) for (k, _), d in ours.items() if k == kind_after)

    def inputs(obj: dict[str, Any]) -> list[tuple[str, str]]:
        spec = obj["spec"]
        named = [("FineTuneJob", (spec["model"].get("fineTuneJob") or {}).get("name")),
                 ("CompressionJob", (spec["model"].get("compressionJob") or {}).get("name"))]
        named += [("FineTuneJob", (a.get("fineTuneJob") or {}).get("name")) for a in spec.get("adapters") or []]
        return [(k, n) for k, n in named if n]

    chained = 0
    for key, obj in ours.items():
        for ref in inputs(obj) if key[0] != "FineTuneJob" else []:
            assert ref in ours, f"{key} reads {ref}, which examples/ lacks"
            assert _wave(ours[ref]) < _wave(obj), f"{ref} must sync before {key}, which reads it"
            chained += 1
    assert chained >= 5  # 03 <- 01, 04 <- 03 and 01, 07 <- 06, 05 <- 07, 08 <- 06
