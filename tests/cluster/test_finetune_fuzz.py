"""Generated FineTuneJobs (only ones the API server accepts) never crash the reconciler.

Each accepted spec either gets its Job (and runs) or ends Failed with a reason
a person can act on.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from finetune_helpers import GROUP, PLURAL, VERSION, condition, status
from llmops.runtime.conditions import now
from llmops.controllers.finetune.plan import Observed, plan
from llmops.settings import Settings
from waiting import wait_for

pytestmark = pytest.mark.cluster

ACTIONABLE = {"InsufficientGPUMemory", "UnsupportedLocation", "InvalidSpec", "DeadlineExceeded"}
GPU_TYPES = [None, "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "NVIDIA-L4"]
_names = itertools.count()

uris = st.sampled_from(["file:///models/m", "hf://org/model", "s3://bucket/model", "gs://bucket/m"])
small = st.integers(min_value=-2, max_value=20)  # out-of-range values too: the API server must refuse them


@st.composite
def finetune_specs(draw, schedulable: bool = False):
    method = draw(st.sampled_from(["full", "freeze", "lora", "qlora", "prompt-tuning", "auto"]))
    spec = {
        "baseModel": {"uri": draw(uris)},
        "dataset": {"uri": draw(st.sampled_from(["file:///d/train.jsonl", "hf://datasets/x", "s3://b/d.jsonl"])),
                    "format": draw(st.sampled_from(["instruction", "chat", "text"]))},
        "method": method,
        "output": {"uri": draw(st.sampled_from(["file:///out/x", "s3://bucket/out"]))},
        "resources": {
            "nodes": draw(st.integers(1, 2) if schedulable else small),
            "gpusPerNode": draw(st.integers(1, 8) if schedulable else small),
        },
        "training": {
            "perDeviceBatchSize": draw(st.integers(1, 64)),
            "maxSeqLength": draw(st.sampled_from([8, 512, 2048, 8192, 131072])),
            "precision": draw(st.sampled_from(["bf16", "fp16", "fp32"])),
            "gradientCheckpointing": draw(st.booleans()),
        },
    }
    gpu_type = draw(st.sampled_from(GPU_TYPES if schedulable else GPU_TYPES + ["NVIDIA-B200", "Unknown-GPU"]))
    if gpu_type:
        spec["resources"]["gpuType"] = gpu_type
    size = draw(st.one_of(st.none(), st.integers(min_value=1 if schedulable else -5, max_value=400_000_000_000)))
    if size is not None:
        spec["baseModel"]["parameterCount"] = size
    # The schedulable variant feeds the real operator: mostly specs the API server accepts.
    if draw(st.booleans()) and (not schedulable or method in ("lora", "qlora", "auto")):
        spec["lora"] = {"r": draw(st.integers(1, 64) if schedulable else small), "alpha": draw(st.integers(1, 64))}
    if draw(st.booleans()):
        stage = draw(st.integers(0, 3 if schedulable else 4))
        spec["deepspeed"] = {"zeroStage": stage, "offloadParams": draw(st.booleans()) and (stage == 3 or not schedulable),
                             "offloadOptimizer": draw(st.booleans()) and (stage > 0 or not schedulable)}
    if method == "freeze" and draw(st.booleans()):
        spec["freeze"] = {"trainableLayers": draw(small)}
    return spec


def _accepted(custom, namespace: str, spec: dict, dry_run: bool = True) -> dict | None:
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": f"fz{next(_names)}"}, "spec": spec}
    try:
        return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj, dry_run="All" if dry_run else None)
    except ApiException as exc:
        assert exc.status in (400, 422), exc.body  # refused cleanly, never a server error
        return None


# Many generated specs are meant to be refused (the API server must refuse them cleanly): no filter health check.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(spec=finetune_specs())
def test_plan_never_crashes_on_accepted_specs(custom, namespace, spec):
    created = _accepted(custom, namespace, spec)
    assume(created is not None)
    created["metadata"].setdefault("uid", "dry-run")
    created["metadata"]["namespace"] = namespace
    result = plan(Observed(created, [], [], now(), {"NVIDIA-H100-80GB-HBM3": 81559, "NVIDIA-L4": 23034}), Settings())
    if result.status["phase"] == "Failed":
        failed = condition(result.status, "Failed")
        assert failed["reason"] in ACTIONABLE and len(failed["message"]) > 20, failed
        assert result.create == []
    else:
        assert [c["kind"] for c in result.create][-1] == "Job"
        json.dumps(result.create)  # serialisable as the API server needs


def test_operator_settles_every_accepted_spec(custom, namespace, operator):
    """A sample of schedulable generated specs through the real operator: Running or an actionable Failed."""
    created: list[str] = []

    # Derandomized: the same sample every run, so CI does not depend on the draw.
    @settings(max_examples=10, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(spec=finetune_specs(schedulable=True))
    def submit(spec):
        spec["podMetadata"] = {"annotations": {"sim.llmops.dev/outcome": "run"}}
        obj = _accepted(custom, namespace, spec, dry_run=False)
        if obj is not None:
            created.append(obj["metadata"]["name"])

    submit()
    assert len(created) >= 3, f"hypothesis produced too few accepted specs: {created}"

    def settled(name):
        st_ = status(custom, namespace, name)
        if st_.get("phase") == "Running":
            return True
        failed = condition(st_, "Failed") or {}
        return failed.get("status") == "True" and failed.get("reason") in ACTIONABLE

    for name in created:
        wait_for(lambda: settled(name), timeout=60, what=f"{name} Running or Failed with an actionable reason")
    assert "Traceback" not in operator.log_tail(10**6)
