"""A CPU chain that really runs: a FineTuneJob trains a LoRA adapter on the real node, and a
CompressionJob that names it waits, then merges and prunes its output in the compression image.

Nothing is simulated: the adapter is trained by peft in the fine-tuning image, merged and pruned
by torch in the compression image, on volumes of the local-path provisioner, and the figures in
the CompressionJob's status are the ones the runner measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from finetune_helpers import GROUP, VERSION, finetunejob
from finetune_helpers import create as create_finetunejob
from finetune_helpers import status as finetune_status
from real_workloads import claim, describe, follow, upload, volume_path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers


@pytest.fixture(scope="module")
def images(node_images):
    return node_images("finetune", "compress")


def compression_status(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "compressionjobs", name).get("status") or {}


def test_a_compressionjob_waits_for_a_real_finetunejob_then_merges_and_prunes_its_adapter(images, cluster, custom, core, namespace, operator, tmp_path):
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_tiny_model

    train, held_out = instruction_examples()
    for name in ("inputs", "outputs"):
        claim(core, namespace, name)
    upload(cluster, core, namespace, "inputs", {
        "model": make_tiny_model(tmp_path / "model", corpus_texts()),
        "train.jsonl": write_jsonl(tmp_path / "train.jsonl", train),
        "held_out.jsonl": write_jsonl(tmp_path / "held_out.jsonl", held_out),
    })
    cpu = {"cpu": "1", "memory": "3Gi"}
    # Created first: it must wait for the FineTuneJob, not fail on a missing input.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "compressionjobs", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CompressionJob", "metadata": {"name": "small"},
        "spec": {
            "model": {"fineTuneJob": {"name": "tuned"}},
            "stages": [{"mergeLora": {}}, {"name": "prune", "prune": {"method": "magnitude", "sparsity": 0.3}}],
            "evaluation": {"datasetUri": "pvc://inputs/held_out.jsonl", "metric": "perplexity", "maxAccuracyDrop": 1.0},
            "output": {"uri": "pvc://outputs/small"},
            "resources": {"gpus": 0, **cpu},
            "backoffLimit": 0,
        },
    })
    create_finetunejob(custom, namespace, finetunejob(
        "tuned", baseModel={"uri": "pvc://inputs/model"}, dataset={"uri": "pvc://inputs/train.jsonl", "validationSplit": 0.1},
        method="lora", resources={"gpusPerNode": 0, **cpu}, output={"uri": "pvc://outputs/tuned"},
        training={"maxSteps": 100, "perDeviceBatchSize": 8, "learningRate": 0.003, "maxSeqLength": 64}, backoffLimit=0))

    tuned = follow(lambda: finetune_status(custom, namespace, "tuned"), core, namespace, "tuned", timeout=600)
    assert tuned[-1][1]["phase"] == "Succeeded", describe(core, namespace, "tuned", tuned)
    timeline = follow(lambda: compression_status(custom, namespace, "small"), core, namespace, "small", timeout=600)
    final = timeline[-1][1]
    assert final["phase"] == "Succeeded", describe(core, namespace, "small", timeline)
    assert any("to succeed" in json.dumps(st.get("conditions")) for _, st in timeline) or timeline[0][1].get("phase") == "Pending"

    # The status carries what the runner measured, stage by stage.
    assert final["inputUri"] == "pvc://outputs/tuned" and final["artifactUri"] == "pvc://outputs/small"
    merge, prune = final["stages"]
    assert (merge["name"], merge["phase"], prune["name"], prune["phase"]) == ("merge-lora-0", "Succeeded", "prune", "Succeeded")
    assert merge["metrics"]["adapterParameters"] > 0 and merge["metrics"]["sparsityAfter"] < 0.01
    assert prune["metrics"]["sparsityAfter"] >= 0.25, prune  # zeros really written into the weights
    assert final["qualityGate"]["passed"] is True and final["qualityGate"]["metric"] == "perplexity"
    assert final["progress"] == "2/2" and final["gpus"] == 0 and final["image"].endswith("runner-compress:0.1.0")

    # The model is on the output claim, as the manifest on that claim says.
    out = volume_path(core, namespace, "outputs") / "small"
    manifest = json.loads((out / "compression.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["merge-lora-0", "prune"]
    assert manifest["stages"][1]["metrics"]["sparsityAfter"] == prune["metrics"]["sparsityAfter"]
    assert (out / "model.safetensors").is_file() and not (out / ".stages").exists()
    pods = core.list_namespaced_pod(namespace, label_selector="llmops.dev/name=small").items
    assert len(pods) == 1 and pods[0].spec.node_name == "local-cpu"
