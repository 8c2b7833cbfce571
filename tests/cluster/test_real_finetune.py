"""A CPU FineTuneJob that really trains: the operator, the real runner image, the real node.

The tiny model and its data are made here (no hub), copied onto a PVC with `kubectl cp`, and the
operator (on the host) launches the fine-tuning runner image on the real node. Nothing is
simulated: the loss comes from torch, the adapter is written by peft onto the output PVC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from finetune_helpers import condition, create, events, finetunejob, status
from real_workloads import claim, describe, follow, upload, volume_path
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers


@pytest.fixture(scope="module")
def finetune_image(node_images):
    return node_images("finetune")[0]


STEPS = 300


@pytest.fixture
def inputs(cluster, core, namespace, tmp_path):
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_tiny_model

    model = make_tiny_model(tmp_path / "model", corpus_texts())
    train, _ = instruction_examples()
    data = write_jsonl(tmp_path / "train.jsonl", train)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine"}\nthis line is not JSON\n')
    claim(core, namespace, "inputs")
    claim(core, namespace, "outputs")
    upload(cluster, core, namespace, "inputs", {"model": model, "train.jsonl": data, "bad.jsonl": bad})
    return namespace


def cpu_job(name: str, dataset: str) -> dict:
    return finetunejob(
        name,
        baseModel={"uri": "pvc://inputs/model"},
        dataset={"uri": f"pvc://inputs/{dataset}", "validationSplit": 0.1},
        method="lora",
        resources={"gpusPerNode": 0, "cpu": "1", "memory": "3Gi"},
        # 300 steps take seconds here: long enough that a scrape (every second in the tests) sees them run.
        training={"maxSteps": STEPS, "perDeviceBatchSize": 8, "learningRate": 0.003, "maxSeqLength": 64, "evalSteps": STEPS // 2},
        output={"uri": f"pvc://outputs/{name}"},
        backoffLimit=2,
    )


def test_a_cpu_finetunejob_trains_for_real_on_the_local_node(finetune_image, inputs, custom, core, operator):
    namespace = inputs
    create(custom, namespace, cpu_job("real-lora", "train.jsonl"))

    # Progress is scraped from the runner's /metrics at the pod's real IP while it trains. Follow the job
    # to its end in one loop: a job that finishes between two polls must not read as "no progress".
    timeline = follow(lambda: status(custom, namespace, "real-lora"), core, namespace, "real-lora", timeout=900)
    running = [st for _, st in timeline if st.get("phase") == "Running" and (st.get("progress") or {}).get("step")]
    final = timeline[-1][1]
    print(describe(core, namespace, "real-lora", timeline))  # shown with -s, and by pytest on a failure
    assert running, f"no live progress was seen while the job ran:\n{describe(core, namespace, 'real-lora', timeline)}"
    assert 0 < running[0]["progress"]["step"] <= STEPS and running[0]["progress"]["totalSteps"] == STEPS
    pods = core.list_namespaced_pod(namespace, label_selector="llmops.dev/name=real-lora").items
    assert pods and pods[0].spec.node_name == "local-cpu" and pods[0].status.pod_ip.startswith("10.251.")

    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    metrics = final["result"]["metrics"]
    assert metrics["trainLoss"] > 0
    assert metrics["evalLoss"] < metrics["evalLossStart"], metrics  # it learned: torch ran, not a simulator
    assert final["result"]["artifactUri"] == "pvc://outputs/real-lora"
    assert final["gpus"] == 0 and final["restarts"] == 0

    # The adapter is on the output claim, written by peft inside the pod.
    adapter = volume_path(core, namespace, "outputs") / "real-lora"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert any(p.name.startswith("adapter_model") for p in adapter.iterdir())


def test_bad_data_fails_with_the_runners_reason_and_no_retry(finetune_image, inputs, custom, core, operator):
    namespace = inputs
    create(custom, namespace, cpu_job("bad-data", "bad.jsonl"))
    final = wait_for(lambda: (st := status(custom, namespace, "bad-data")).get("phase") in ("Succeeded", "Failed") and st,
                     timeout=300, interval=1, what="the job to finish")
    assert final["phase"] == "Failed"
    failed = condition(final, "Failed") or condition(final, "Ready")
    assert "line 2" in failed["message"] or "JSON" in failed["message"], failed
    assert failed["reason"] not in ("BackoffLimitExceeded", "Error"), failed
    # Exit 2 is permanent: one pod, no retry, though backoffLimit allows two.
    pods = core.list_namespaced_pod(namespace, label_selector="llmops.dev/name=bad-data").items
    assert len(pods) == 1
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 2
    assert final.get("restarts", 0) == 0
    assert any(e.reason == failed["reason"] for e in events(core, namespace, "bad-data"))
