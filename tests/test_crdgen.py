"""The CRDs in crds/ are exactly what the API models generate, and are structural."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from llmops import crdgen
from llmops.api import COMPRESSION, FINETUNE, INFERENCE, KINDS

REPO = Path(__file__).resolve().parents[1]


def test_crds_match_generator_output():
    stale = [str(p.relative_to(REPO)) for p, text in crdgen.targets(REPO).items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `llmops-crdgen`: these files differ from the models: {stale}"


def test_check_mode_detects_drift(tmp_path):
    shutil.copytree(REPO / "dashboards", tmp_path / "dashboards")
    assert crdgen.main(["--root", str(tmp_path)]) == 0  # writes a fresh copy
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
    target = tmp_path / "crds" / "llmops.dev_finetunejobs.yaml"
    target.write_text(target.read_text().replace("maxSteps", "maxStepz"))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural_and_described(kind):
    schema = crdgen.openapi_schema(kind)
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("type") != "null", path
    spec_props = schema["properties"]["spec"]["properties"]
    missing = [name for name, prop in spec_props.items() if not prop.get("description")]
    assert not missing, f"spec fields without description (kubectl explain would be empty): {missing}"


def test_names_and_columns():
    names = {k.kind: crdgen.crd(k)["spec"]["names"] for k in KINDS}
    short = {s for n in names.values() for s in n["shortNames"]}
    # KServe's and Kubeflow's short names must stay free.
    assert not short & {"isvc", "llmisvc", "tfjob", "pytorchjob", "trainjob", "mpijob", "tj"}
    assert all(n["categories"] == ["llmops"] for n in names.values())
    columns = {c["name"] for c in crdgen.crd(FINETUNE)["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Phase", "Method", "GPUs", "Progress", "Age"} <= columns
    assert {"Phase", "Engine", "GPUs"} <= {c.name for c in INFERENCE.columns}
    assert {"Phase", "GPUs"} <= {c.name for c in COMPRESSION.columns}


def test_immutable_fields_get_transition_rules():
    spec = crdgen.openapi_schema(FINETUNE)["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "method is immutable", "reason": "FieldValueForbidden"} in spec["properties"]["method"][
        "x-kubernetes-validations"
    ]
    assert "x-kubernetes-validations" not in spec["properties"]["suspend"]
    assert not any("x-llmops" in key for _, node in _walk(spec) for key in node)


def test_examples_parse_with_the_models():
    """The models the operator uses accept every example (same truth as the CRD)."""
    by_kind = {k.kind: k for k in KINDS}
    docs = [d for f in sorted((REPO / "examples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert len(docs) >= 5
    for doc in docs:
        by_kind[doc["kind"]].spec.model_validate(doc["spec"])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_quantities_are_checked_by_the_kubernetes_quantity_library(kind):
    """Every int-or-string quantity has a bounded length and a CEL rule on itself (so errors name it).

    The rule is the API server's; tests/cluster/test_api_validation.py checks what it accepts.
    """
    spec = crdgen.openapi_schema(kind)["properties"]["spec"]
    quantities = {path: node for path, node in _walk(spec) if node.get("x-kubernetes-int-or-string")}
    assert {p.rsplit(".", 1)[-1] for p in quantities} == {"cpu", "memory", "sharedMemory"}
    for path, node in quantities.items():
        assert "pattern" not in node, path  # the old hand-written pattern accepted 1.2.3 and 8iiii
        assert node["maxLength"] <= 64, path
        [entry] = node["x-kubernetes-validations"]
        assert "isQuantity(self)" in entry["rule"] and "self >= 0" in entry["rule"] and "fieldPath" not in entry, path
