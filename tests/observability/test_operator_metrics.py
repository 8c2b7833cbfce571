"""The operator's per-object series follow each object's status, and go with the object."""

from __future__ import annotations

from prometheus_client import REGISTRY

from llmops.controllers import compression, finetune, inference
from llmops.runtime import metrics


def samples(series: str, **match) -> dict[tuple, float]:
    """label pairs → value of one series' samples whose labels include `match`."""
    return {tuple(sorted(s.labels.items())): s.value for family in REGISTRY.collect() for s in family.samples
            if s.name == series and all(s.labels.get(k) == v for k, v in match.items())}


def test_a_phase_change_replaces_the_series_and_a_failure_names_its_reason():
    where = {"namespace": "metrics-ns", "name": "job-a"}
    metrics.observe_object("FineTuneJob", "metrics-ns", "job-a", {"phase": "Running", "gpus": 8})
    assert list(samples("llmops_object_phase", **where).values()) == [1.0]
    assert samples("llmops_object_phase", **where, phase="Running")
    failed = {"phase": "Failed", "gpus": 8, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    gpus_before = samples("llmops_gpus_requested", kind="FineTuneJob")
    metrics.observe_object("FineTuneJob", "metrics-ns", "job-a", failed, [("", "evalLoss", 1.5)])
    assert list(samples("llmops_object_phase", **where)) == [tuple(sorted({**where, "kind": "FineTuneJob", "phase": "Failed"}.items()))]
    assert samples("llmops_object_failed", **where, reason="BackoffLimitExceeded")
    assert samples("llmops_status_figure", **where, figure="evalLoss") and list(samples("llmops_status_figure", **where).values()) == [1.5]
    # A finished job holds no GPUs.
    assert list(samples("llmops_gpus_requested", kind="FineTuneJob").values())[0] == list(gpus_before.values())[0] - 8
    metrics.forget_object("FineTuneJob", "metrics-ns", "job-a")
    for name in ("llmops_object_phase", "llmops_object_failed", "llmops_status_figure"):
        assert not samples(name, **where), name


def test_figures_that_are_not_numbers_are_left_out():
    metrics.observe_object("CompressionJob", "metrics-ns", "job-b", {"phase": "Succeeded"}, [("", "sizeRatio", 0.5), ("", "note", "x")])
    assert [dict(labels)["figure"] for labels in samples("llmops_status_figure", name="job-b")] == ["sizeRatio"]
    metrics.forget_object("CompressionJob", "metrics-ns", "job-b")


def test_the_failure_reason_comes_from_a_jobs_failed_or_a_services_ready_condition():
    job = {"conditions": [{"type": "Failed", "status": "True", "reason": "QualityGateFailed"}, {"type": "Ready", "status": "False", "reason": "Other"}]}
    service = {"conditions": [{"type": "Ready", "status": "False", "reason": "InputFailed"}]}
    assert metrics.failure_reason(job) == "QualityGateFailed"
    assert metrics.failure_reason(service) == "InputFailed"
    assert metrics.failure_reason({}) == "Unknown"


def test_each_kind_exports_the_figures_its_status_reports():
    status = {"metrics": {"sizeRatio": 0.7}, "qualityGate": {"passed": False},
              "stages": [{"name": "prune", "metrics": {"sizeBytesAfter": 10.0}}, {"name": "quantize", "metrics": {"qualityAfter": 0.5}}]}
    assert sorted(compression.CONTROLLER.figures(status)) == sorted([
        ("", "sizeRatio", 0.7), ("", "qualityGatePassed", 0.0), ("0-prune", "sizeBytesAfter", 10.0), ("1-quantize", "qualityAfter", 0.5)])
    assert finetune.CONTROLLER.figures({"result": {"metrics": {"evalLoss": 2.0}}}) == [("", "evalLoss", 2.0)]
    assert inference.CONTROLLER.figures({"replicas": 2, "readyReplicas": 1}) == [("", "replicas", 2.0), ("", "readyReplicas", 1.0)]


def test_queue_depth_counts_keys_waiting_for_a_worker():
    from llmops.runtime.workqueue import WorkQueue

    queue = WorkQueue(lambda key: None, workers=1)  # not opened: nothing is handed out
    for key in ("a", "b", "a"):
        queue.add(key)
    metrics.watch_queue(queue.depth)
    assert samples("llmops_workqueue_depth") == {(): 2.0}
    queue.stop()
