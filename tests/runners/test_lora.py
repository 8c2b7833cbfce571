"""Acceptance 1 and 3: LoRA really learns the task, reports its size, and merges to the same logits."""
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmops_runners.artifacts import sha256_of
from tests.helpers.evaluation import answer_accuracy

from .runner_support import run_in_process

SECRET = "hf_test_secret_value_do_not_leak"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, task):
    """One LoRA run shared by the tests below (training is the expensive part)."""
    import os

    from .conftest import BASE_CONFIG, deep_merge

    root = tmp_path_factory.mktemp("lora")
    cfg = deep_merge(BASE_CONFIG, {
        "model": {"path": str(tiny_model)},
        "dataset": {"path": str(task["train_path"])},
        "training": {"maxSteps": 300, "learningRate": 5e-3, "evalSteps": 50},
        "output": {"path": str(root / "out"), "mergeLora": True},
        "terminationMessagePath": str(root / "termination-log"),
    })
    config_path = root / "config.json"
    config_path.write_text(json.dumps(cfg))
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = SECRET  # the runner hands it to the hub client only
    try:
        code, message = run_in_process(config_path)
    finally:
        os.environ.pop("HF_TOKEN") if old is None else os.environ.__setitem__("HF_TOKEN", old)
    return {"code": code, "message": message, "out": root / "out", "root": root}


def test_lora_run_succeeds_and_validation_loss_halves(lora_run):
    assert lora_run["code"] == 0, lora_run["message"]
    metrics = lora_run["message"]["metrics"]
    assert lora_run["message"]["status"] == "Succeeded"
    assert lora_run["message"]["globalStep"] == 300
    assert metrics["evalLoss"] <= metrics["evalLossStart"] / 2, metrics


def test_trainable_parameters_are_reported(lora_run):
    metrics = lora_run["message"]["metrics"]
    # q,k,v,o adapters at r=8 on the tiny model: 2 layers x 8 x (64+64 + 64+32 + 64+32 + 64+64).
    assert metrics["trainableParameters"] == 2 * 8 * (128 + 96 + 96 + 128)
    assert metrics["totalParameters"] > metrics["trainableParameters"]


def test_adapter_answers_held_out_questions_better_than_base(lora_run, tiny_model, task):
    tokenizer = AutoTokenizer.from_pretrained(lora_run["out"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_accuracy = answer_accuracy(base, tokenizer, task["held_out"])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), lora_run["out"])
    tuned_accuracy = answer_accuracy(tuned, tokenizer, task["held_out"])
    print(f"held-out accuracy: base {base_accuracy:.2f}, LoRA {tuned_accuracy:.2f}")
    assert tuned_accuracy >= 0.5
    assert tuned_accuracy >= base_accuracy + 0.4


def test_adapter_files_and_manifest(lora_run, tiny_model):
    out = lora_run["out"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # an adapter run ships the adapter, not the base
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        assert any("lora_A" in k for k in f.keys())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "lora" and manifest["baseModel"]["path"] == str(tiny_model)
    assert manifest["metrics"]["evalLoss"] == lora_run["message"]["metrics"]["evalLoss"]
    assert manifest["files"]["adapter_model.safetensors"] == sha256_of(out / "adapter_model.safetensors")
    assert manifest["files"]["merged/model.safetensors"] == sha256_of(out / "merged" / "model.safetensors")


def test_merged_model_gives_the_adapter_logits(lora_run, tiny_model):
    out = lora_run["out"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["What colour is the apple?", "Name the colour of the tiger."], return_tensors="pt", padding=True)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        expected = adapter(**batch).logits
        actual = merged(**batch).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_token_is_never_written(lora_run):
    for file in Path(lora_run["root"]).rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
