"""Helpers to write FineTuneJobs and watch what the operator makes of them."""

from __future__ import annotations

import copy
import json
from typing import Any

from waiting import wait_for

GROUP, VERSION, PLURAL = "llmops.dev", "v1alpha1", "finetunejobs"


def finetunejob(name: str, sim: dict[str, str] | None = None, **spec_changes: Any) -> dict[str, Any]:
    """A small valid FineTuneJob; `sim` sets the kwok outcome annotations of its pods."""
    spec: dict[str, Any] = {
        "baseModel": {"uri": "file:///models/tiny", "parameterCount": 125_000_000},
        "dataset": {"uri": "file:///data/train.jsonl"},
        "method": "lora",
        "resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"},
        "output": {"uri": "file:///output/" + name},
    }
    for key, value in spec_changes.items():
        spec[key] = copy.deepcopy(value)
    if sim:
        spec["podMetadata"] = {"annotations": {f"sim.llmops.dev/{k}": v for k, v in sim.items()}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


def succeed_with(report: dict[str, Any], duration: str = "2s") -> dict[str, str]:
    return {"outcome": "succeed", "duration": duration, "message": json.dumps(report)}


def create(custom, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)


def get(custom, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_spec(custom, namespace: str, name: str, changes: dict[str, Any]) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": changes})


def status(custom, namespace: str, name: str) -> dict[str, Any]:
    return get(custom, namespace, name).get("status") or {}


def wait_phase(custom, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (s := status(custom, namespace, name)).get("phase") == phase and s, timeout=timeout, what=f"{name} phase {phase}")


def condition(st: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), None)


def events(core, namespace: str, name: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name and e.involved_object.kind == "FineTuneJob"]
