"""The real kube-apiserver accepts the examples and rejects bad manifests, naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "llmops.dev", "v1alpha1"
PLURALS = {"FineTuneJob": "finetunejobs", "CompressionJob": "compressionjobs", "InferenceService": "inferenceservices"}

FINETUNE = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "FineTuneJob",
    "metadata": {"name": "ft"},
    "spec": {
        "baseModel": {"uri": "pvc://models/base"},
        "dataset": {"uri": "pvc://data/train.jsonl"},
        "method": "lora",
        "output": {"uri": "pvc://models/out"},
    },
}
COMPRESSION = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "CompressionJob",
    "metadata": {"name": "cj"},
    "spec": {
        "model": {"uri": "pvc://models/base"},
        "stages": [{"quantize": {"method": "w8a8-int8", "calibration": {"datasetUri": "pvc://data/calib.jsonl"}}}],
        "output": {"uri": "pvc://models/q"},
    },
}
INFERENCE = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "InferenceService",
    "metadata": {"name": "svc"},
    "spec": {"model": {"uri": "pvc://models/base"}, "resources": {"gpus": 1}},
}


def with_spec(base: dict, **changes) -> dict:
    """A copy of base with spec paths (dotted) set; None deletes."""
    obj = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


# (id, manifest, field the error must name, words the message must contain)
INVALID = [
    ("wrong-type", with_spec(FINETUNE, training={"epochs": "three"}), "spec.training.epochs", "number"),
    ("unknown-method", with_spec(FINETUNE, method="dpo"), "spec.method", "Unsupported value"),
    ("negative-gpus", with_spec(FINETUNE, resources={"gpusPerNode": -1}), "spec.resources.gpusPerNode", "greater than or equal to 0"),
    ("zero-nodes", with_spec(FINETUNE, resources={"nodes": 0}), "spec.resources.nodes", "greater than or equal to 1"),
    ("lora-with-full", with_spec(FINETUNE, method="full", lora={"r": 8}), "spec.lora", "only be set when method is lora"),
    ("freeze-with-lora", with_spec(FINETUNE, freeze={"trainableLayers": 2}), "spec.freeze", "only be set when method is freeze"),
    ("bad-uri-scheme", with_spec(FINETUNE, baseModel={"uri": "ftp://host/model"}), "spec.baseModel.uri", "should match"),
    ("output-to-hub", with_spec(FINETUNE, output={"uri": "hf://org/model"}), "spec.output.uri", "should match"),
    ("missing-dataset", with_spec(FINETUNE, dataset=None), "spec.dataset", "Required value"),
    ("validation-split", with_spec(FINETUNE, dataset={"uri": "pvc://d/x", "validationSplit": 0.9}), "spec.dataset.validationSplit", "less than or equal to 0.5"),
    ("offload-params-zero2", with_spec(FINETUNE, deepspeed={"zeroStage": 2, "offloadParams": True}), "spec.deepspeed.offloadParams", "zeroStage 3"),
    ("bad-quantity", with_spec(FINETUNE, resources={"memory": "lots"}), "spec.resources.memory", "non-negative Kubernetes quantity"),
    ("unknown-field", with_spec(FINETUNE, learningRate=0.1), "spec.learningRate", "unknown field"),
    ("two-model-sources", with_spec(INFERENCE, model={"uri": "pvc://m/a", "fineTuneJob": {"name": "ft"}}), "spec.model", "exactly one of uri, fineTuneJob, compressionJob"),
    ("no-model-source", with_spec(COMPRESSION, model={}), "spec.model", "exactly one of uri, fineTuneJob"),
    ("min-over-max", with_spec(INFERENCE, autoscaling={"minReplicas": 5, "maxReplicas": 2, "target": 10}), "spec.autoscaling.minReplicas", "must not exceed maxReplicas"),
    ("vllm-without-gpu", with_spec(INFERENCE, resources={"gpus": 0}), "spec.resources.gpus", "at least one GPU"),
    ("tp-over-gpus", with_spec(INFERENCE, vllm={"tensorParallelSize": 4}), "spec.vllm.tensorParallelSize", "may not exceed resources.gpus"),
    ("unknown-quant-method", with_spec(COMPRESSION, stages=[{"quantize": {"method": "int3"}}]), "spec.stages[0].quantize.method", "Unsupported value"),
    ("stage-two-ops", with_spec(COMPRESSION, stages=[{"quantize": {"method": "fp8"}, "prune": {"method": "magnitude"}}]), "spec.stages[0]", "exactly one of quantize, prune, distill, mergeLora"),
    ("sparsity-2-4", with_spec(COMPRESSION, stages=[{"prune": {"method": "2:4", "sparsity": 0.7}}]), "spec.stages[0].prune.sparsity", "exactly 0.5"),
    ("no-stages", with_spec(COMPRESSION, stages=[]), "spec.stages", "at least 1 items"),
    ("bad-adapter-name", with_spec(INFERENCE, adapters=[{"name": "bad name!", "uri": "pvc://a/b"}]), "spec.adapters[0].name", "should match"),
    # The runner refuses these only after its pods hold their GPUs: the API server must refuse them first.
    ("qlora-zero3", with_spec(FINETUNE, method="qlora", deepspeed={"zeroStage": 3}), "spec.deepspeed.zeroStage", "qlora cannot be sharded with deepspeed zeroStage 3"),
    ("hub-dataset", with_spec(FINETUNE, dataset={"uri": "hf://tatsu-lab/alpaca"}), "spec.dataset.uri", "hf:// datasets are not supported"),
    ("hub-validation-dataset", with_spec(FINETUNE, dataset={"uri": "pvc://d/train.jsonl", "validationUri": "hf://org/val"}), "spec.dataset.validationUri", "hf:// datasets are not supported"),
]

# Every Quantity field of every kind: (kind's base manifest, field). The int-or-string schema's
# pattern never applies to numbers, so -7 as an integer needs its own check.
QUANTITY_FIELDS = [(base, name) for base in (FINETUNE, COMPRESSION, INFERENCE) for name in ("cpu", "memory", "sharedMemory")]
BAD_QUANTITIES = ["1.2.3", "8iiii", -7, "-1Gi", "lots", ""]
GOOD_QUANTITIES = ["500m", "64Gi", "1e3", 4, "4", "0.5", "1.5Gi", "100M", 0]


def _create(custom, namespace: str, obj: dict):
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj, field_validation="Strict"
    )


def _error(exc: ApiException) -> tuple[str, list[str]]:
    body = json.loads(exc.body)
    fields = [cause.get("field", "") for cause in body.get("details", {}).get("causes", [])]
    return body.get("message", ""), fields


def test_enough_invalid_cases():
    assert len(INVALID) >= 15


def test_invalid_manifests_are_rejected_naming_the_field(custom, namespace):
    failures = []
    for i, (case_id, manifest, field, words) in enumerate(INVALID):
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["name"] = f"bad-{i}"  # a wrongly accepted case must not make the next one a 409
        problem = _refusal_problem(custom, namespace, manifest, (400, 422), field, words)
        if problem:
            failures.append(f"{case_id}: {problem}")
    assert not failures, "\n".join(failures)


def _refusal_problem(custom, namespace, manifest, statuses, field, words) -> str | None:
    """None when the API server refuses the manifest with one of `statuses`, naming `field` and saying `words`."""
    try:
        _create(custom, namespace, manifest)
    except ApiException as exc:
        message, fields = _error(exc)
        if exc.status not in statuses or field not in message or words not in message:
            return f"status {exc.status}, fields {fields}, message {message!r}"
        return None
    return "accepted"


@pytest.mark.parametrize("base", [FINETUNE, COMPRESSION, INFERENCE], ids=lambda b: b["kind"])
def test_invalid_quantities_are_rejected_naming_the_field(custom, namespace, base):
    failures = []
    for field in ("cpu", "memory", "sharedMemory"):
        for i, value in enumerate(BAD_QUANTITIES):
            manifest = with_spec(base, resources={**base["spec"].get("resources", {}), field: value})
            manifest["metadata"]["name"] = f"{base['metadata']['name']}-{field.lower()}-{i}"  # one accepted must not hide the next
            problem = _refusal_problem(custom, namespace, manifest, (422,), f"spec.resources.{field}", "non-negative Kubernetes quantity")
            if problem:
                failures.append(f"{field}={value!r}: {problem}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("base", [FINETUNE, COMPRESSION, INFERENCE], ids=lambda b: b["kind"])
def test_valid_quantities_are_accepted(custom, namespace, base):
    for i, value in enumerate(GOOD_QUANTITIES):
        manifest = with_spec(base, resources={**base["spec"].get("resources", {}), "cpu": value, "memory": value, "sharedMemory": value})
        manifest["metadata"]["name"] = f"{base['metadata']['name']}-{i}"
        created = _create(custom, namespace, manifest)
        assert created["spec"]["resources"]["cpu"] == value


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "qlora", "deepspeed": {"zeroStage": 2, "offloadOptimizer": True}},
        {"method": "lora", "deepspeed": {"zeroStage": 3}},
        {"method": "auto", "deepspeed": {"zeroStage": 3}},  # auto never picks qlora under ZeRO-3 (vram.choose_method)
        {"baseModel": {"uri": "hf://org/model"}, "dataset": {"uri": "file:///data/train.jsonl", "validationUri": "pvc://d/val.jsonl"}},
    ],
    ids=["qlora-zero2", "lora-zero3", "auto-zero3", "hub-model-file-dataset"],
)
def test_neighbours_of_the_refused_combinations_are_accepted(custom, namespace, changes):
    _create(custom, namespace, with_spec(FINETUNE, **changes))


IMMUTABLE_CHANGES = [
    ("method", FINETUNE, {"method": "qlora"}, "spec.method"),
    ("base-model", FINETUNE, {"baseModel": {"uri": "pvc://models/other"}}, "spec.baseModel"),
    ("add-deepspeed", FINETUNE, {"deepspeed": {"zeroStage": 2}}, "spec.deepspeed"),
    ("gpus", FINETUNE, {"resources": {"gpusPerNode": 4}}, "spec.resources"),
    ("stages", COMPRESSION, {"stages": [{"prune": {"method": "magnitude"}}]}, "spec.stages"),
]


@pytest.mark.parametrize("case_id,base,patch,field", IMMUTABLE_CHANGES, ids=[c[0] for c in IMMUTABLE_CHANGES])
def test_immutable_fields_cannot_change(custom, namespace, case_id, base, patch, field):
    _create(custom, namespace, base)
    plural = PLURALS[base["kind"]]
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, base["metadata"]["name"], {"spec": patch})
    message, _ = _error(info.value)
    assert info.value.status == 422 and field in message and "immutable" in message, message


def test_mutable_fields_can_change(custom, namespace):
    _create(custom, namespace, FINETUNE)
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunejobs", "ft", {"spec": {"suspend": True, "activeDeadlineSeconds": 600, "backoffLimit": 5}}
    )
    assert patched["spec"]["suspend"] is True and patched["spec"]["activeDeadlineSeconds"] == 600


def test_schema_defaults_are_applied(custom, namespace):
    created = _create(custom, namespace, FINETUNE)
    spec = created["spec"]
    assert spec["training"]["scheduler"] == "cosine"
    assert spec["resources"] == {"nodes": 1, "gpusPerNode": 1}
    assert spec["checkpointing"]["resume"] is True and spec["backoffLimit"] == 3


def _example_docs():
    return [d for f in sorted((REPO / "examples").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_examples_apply_and_show_columns(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples"))
    listing = cluster.kubectl("get", "finetunejobs", "-n", namespace).stdout
    header = listing.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "METHOD", "NODES", "GPUS", "PROGRESS", "AGE"], listing
    names = {d["metadata"]["name"] for d in _example_docs()}
    everything = cluster.kubectl("get", "llmops", "-n", namespace, "-o", "name").stdout
    assert {line.split("/", 1)[1] for line in everything.split()} == names
    short = cluster.kubectl("get", "ftj,cpj,lis", "-n", namespace, "-o", "name").stdout
    assert len(short.split()) == len(names)


def test_explain_prints_descriptions(cluster):
    out = cluster.kubectl("explain", "finetunejob.spec.lora").stdout
    assert "Rank of the adapter matrices." in out
    assert "Scaling numerator" in out
    out = cluster.kubectl("explain", "inferenceservice.spec.autoscaling.minReplicas").stdout
    assert "Fewest replicas" in out
