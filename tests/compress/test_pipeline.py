"""The compression runner end to end, as its image runs it: chains, the quality gate, bad input.

Each test runs `python -m llmops_runners.compress --config ...` in the venv of the image that would
run it (tests/compress/conftest.py) on the tiny causal LM of the fine-tuning tests and a LoRA
adapter made on it here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_compress

from llmops_runners.errors import EXIT_BAD_INPUT, EXIT_OK


@pytest.fixture(scope="session")
def adapter(tiny_lm, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny Llama with non-zero B matrices, saved as the fine-tuning runner saves one."""
    from tests.helpers.tiny_models import make_lora_adapter

    return make_lora_adapter(tiny_lm["model"], tmp_path_factory.mktemp("adapter") / "adapter")


def lm_config(source: Path, out: Path, stages: list[dict], evaluation: dict | None = None, **extra) -> dict:
    config = {"model": {"path": str(source)}, "stages": stages, "output": {"path": str(out)}, "maxSeqLength": 64, **extra}
    if evaluation:
        config["evaluation"] = evaluation
    return config


def test_merge_lora_takes_the_base_from_the_adapters_own_config(adapter, tiny_lm, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = run_compress(lm_config(adapter, tmp_path / "out", [{"mergeLora": {}}],
                                 {"path": str(tiny_lm["held_out"]), "metric": "perplexity", "maxAccuracyDrop": 0.0}), tmp_path)
    assert run.exit_code == EXIT_OK, run.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(run.output).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm["model"]), str(adapter)).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)
    stage = run.stage("merge-lora-0")
    lora = sum(p.numel() for n, p in reference.named_parameters() if "lora_" in n)
    assert stage["type"] == "mergeLora" and stage["metrics"]["adapterParameters"] == lora > 0
    # The gate compares the merged model with itself: nothing lost, every greedy reply the same.
    assert run.report["qualityGate"]["drop"] == 0 and run.report["qualityGate"]["greedyAgreement"] == 1.0
    manifest = json.loads((run.output / "compression.json").read_text())
    assert manifest["qualityGate"]["passed"] is True and not (run.output / ".stages").exists()


def test_an_impossible_budget_fails_the_gate_with_both_numbers_and_keeps_the_model(classifier, tmp_path):
    # A trained model (the MiniLM classifier) whose accuracy pruning nine weights in ten destroys.
    run = run_compress(lm_config(classifier["model"], tmp_path / "out", [{"prune": {"method": "magnitude", "sparsity": 0.9}}],
                                 {"path": str(classifier["eval"]), "metric": "accuracy", "maxAccuracyDrop": 0.0, "samples": 200}), tmp_path)
    assert run.exit_code == EXIT_BAD_INPUT, run.stderr[-2000:]
    report, gate = run.report, run.report["qualityGate"]
    assert report["reason"] == "QualityGateFailed" and gate["passed"] is False and gate["after"] < gate["before"]
    assert f"{gate['before']:.4g}" in report["message"] and f"{gate['after']:.4g}" in report["message"]
    assert report["stages"][0]["metrics"]["sparsityAfter"] > 0.85  # the figures of the stage that ran are reported
    assert json.loads((run.output / "compression.json").read_text())["qualityGate"]["passed"] is False
    assert (run.output / "model.safetensors").is_file()  # kept for a person to look at


def test_a_reasonable_budget_passes(classifier, tmp_path):
    run = run_compress(lm_config(classifier["model"], tmp_path / "out", [{"prune": {"method": "magnitude", "sparsity": 0.1}}],
                                 {"path": str(classifier["eval"]), "metric": "accuracy", "maxAccuracyDrop": 0.05, "samples": 200}), tmp_path)
    assert run.exit_code == EXIT_OK, run.stderr[-2000:]
    assert run.report["qualityGate"]["passed"] is True and run.report["metrics"]["qualityDrop"] <= 0.05


def test_one_chained_job_merges_prunes_distills_and_quantizes_and_reports_every_stage(adapter, tiny_lm, tmp_path):
    stages = [
        {"mergeLora": {}},
        {"prune": {"method": "magnitude", "sparsity": 0.3}},
        {"distill": {"studentFromTeacher": {"numLayers": 1}, "datasetPath": str(tiny_lm["train"]), "maxSteps": 20, "batchSize": 8}},
        {"quantize": {"method": "w8a8-int8", "calibration": {"path": str(tiny_lm["train"]), "samples": 16}}},
    ]
    run = run_compress(lm_config(adapter, tmp_path / "out", stages,
                                 {"path": str(tiny_lm["held_out"]), "metric": "perplexity", "maxAccuracyDrop": 1.0, "samples": 16}), tmp_path)
    assert run.exit_code == EXIT_OK, run.stderr[-3000:]
    names = [s["name"] for s in run.report["stages"]]
    assert names == ["merge-lora-0", "prune-1", "distill-2", "quantize-3"]
    for stage in run.report["stages"]:
        assert stage["phase"] == "Succeeded" and stage["metrics"]["durationSeconds"] > 0
        assert {"sizeBytesAfter", "latencyMsAfter", "qualityAfter"} <= set(stage["metrics"]), stage
    prune, distill = run.stage("prune-1")["metrics"], run.stage("distill-2")["metrics"]
    assert prune["sparsityAfter"] >= 0.25 and distill["parametersAfter"] < distill["parametersBefore"]
    config = json.loads((run.output / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors" and config["num_hidden_layers"] == 1
    assert run.report["metrics"]["parameterRatio"] < 1


@pytest.mark.parametrize(("case", "expected"), [
    ("adapter-without-base", "names no base model"),
    ("missing-calibration", "calibration data"),
    ("onnx-in-the-llm-compressor-image", "runner-compress-onnx"),
    ("vllm-quantization-of-a-classifier", "causal language models"),
    ("output-over-input", "would overwrite the input"),
])
def test_bad_input_exits_2_with_one_sentence_before_any_stage_runs(case, expected, adapter, tiny_lm, classifier, tmp_path):
    out = tmp_path / "out"
    if case == "adapter-without-base":
        orphan = tmp_path / "orphan"
        orphan.mkdir()
        for file in adapter.iterdir():
            (orphan / file.name).write_bytes(file.read_bytes())
        cfg = json.loads((orphan / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = None
        (orphan / "adapter_config.json").write_text(json.dumps(cfg))
        config = lm_config(orphan, out, [{"mergeLora": {}}])
    elif case == "missing-calibration":
        config = lm_config(tiny_lm["model"], out, [{"quantize": {"method": "w4a16", "calibration": {"path": str(tmp_path / "nope.jsonl")}}}])
    elif case == "onnx-in-the-llm-compressor-image":
        config = lm_config(tiny_lm["model"], out, [{"quantize": {"method": "onnx-dynamic-int8"}}])
    elif case == "vllm-quantization-of-a-classifier":
        config = lm_config(classifier["model"], out, [{"quantize": {"method": "fp8"}}])
    else:
        config = lm_config(tiny_lm["model"], tiny_lm["model"] / "compressed", [{"prune": {"method": "magnitude"}}])
    run = run_compress(config, tmp_path)
    assert run.exit_code == EXIT_BAD_INPUT, run.stderr[-2000:]
    message = run.report["message"]
    assert run.report["reason"] == "InvalidInput" and expected in message, message
    assert "\n" not in message and message.endswith(".")
    assert not (out / ".stages").exists() and not (tiny_lm["model"] / "compressed").exists()


def test_metrics_show_the_running_stage_and_sigterm_stops_the_run_with_a_report(tiny_lm, tmp_path):
    """What the operator scrapes (llmops_compress_*) while a stage runs, and a pod stopped mid-run."""
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from conftest import python_of

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stages = [{"prune": {"method": "magnitude", "sparsity": 0.1}},
              {"distill": {"studentFromTeacher": {"numLayers": 1}, "datasetPath": str(tiny_lm["train"]), "maxSteps": 100000, "batchSize": 4}}]
    config = {**lm_config(tiny_lm["model"], tmp_path / "out", stages), "metrics": {"port": port},
              "terminationMessagePath": str(tmp_path / "termination.json")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(python_of("compress")), "-m", "llmops_runners.compress", "--config", str(tmp_path / "config.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline = {}, time.monotonic() + 300
        while time.monotonic() < deadline and not (seen.get("llmops_compress_stage") == 1 and seen.get("llmops_compress_stage_step", 0) > 0):
            time.sleep(0.5)
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue  # not serving yet
            seen = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith("llmops_compress_")}
        assert seen.get("llmops_compress_stage") == 1 and seen["llmops_compress_stages_total"] == 2, seen
        assert seen["llmops_compress_stage_total_steps"] == 100000 and seen["llmops_compress_stage_step"] > 0
        assert 'figure="sparsityAfter"' in page and 'stage="prune-0"' in page  # the finished stage's figures
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        proc.kill()
    report = json.loads((tmp_path / "termination.json").read_text())
    assert report["status"] == "Failed" and report["reason"] == "Terminated"


def test_the_onnx_image_merges_an_adapter_and_quantizes_the_causal_lm_to_int8(adapter, tiny_lm, tmp_path):
    """transformers 4 (optimum-onnx's) reading what transformers 5 (the fine-tuning image's) wrote."""
    run = run_compress(lm_config(adapter, tmp_path / "out", [{"mergeLora": {}}, {"quantize": {"method": "onnx-dynamic-int8"}}],
                                 {"path": str(tiny_lm["held_out"]), "metric": "perplexity", "maxAccuracyDrop": 0.1, "samples": 16}),
                       tmp_path, family="compress-onnx")
    assert run.exit_code == EXIT_OK, run.stderr[-3000:]
    assert (run.output / "model.onnx").is_file() and json.loads((run.output / "compression.json").read_text())["format"] == "onnx"
    gate = run.report["qualityGate"]
    assert gate["passed"] and gate["greedyAgreement"] >= 0.5, gate  # the INT8 graph decodes like the merged model
    assert run.stage("quantize-1")["metrics"]["int8OnnxBytes"] < run.stage("quantize-1")["metrics"]["fp32OnnxBytes"]
