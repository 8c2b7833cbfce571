"""Operator and runner meet only at the config contract and the termination message: check both sides agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmops.api.finetune import FineTuneJobSpec
from llmops.controllers.finetune.builders import runner_config
from llmops.runtime.pods import failure_of, termination_report
from llmops.settings import Settings

runner_config_model = pytest.importorskip("llmops_runners.config").RunnerConfig
termination = pytest.importorskip("llmops_runners.termination")

BODY = {"apiVersion": "llmops.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ft", "namespace": "ns", "uid": "u"}}
BASE = {"baseModel": {"uri": "pvc://models/base"}, "dataset": {"uri": "pvc://data/d.jsonl"}, "output": {"uri": "pvc://models/out"}}
SPECS = {
    "lora": {"method": "lora", "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj"]}},
    "qlora": {"method": "qlora", "qlora": {"quantType": "nf4"}, "training": {"earlyStopping": {"patience": 2}, "evalSteps": 10}},
    "full-zero3": {"method": "full", "deepspeed": {"zeroStage": 3, "offloadParams": True, "offloadOptimizer": True}},
    "freeze": {"method": "freeze", "freeze": {"trainableLayers": 1}},
    "prompt": {"method": "prompt-tuning", "promptTuning": {"numVirtualTokens": 8, "initText": "Answer:"}},
    "chat-token": {"method": "lora", "baseModel": {"uri": "hf://org/m", "revision": "v2", "tokenSecretRef": {"name": "s"}},
                   "dataset": {"uri": "file:///d/chat.jsonl", "format": "chat", "validationUri": "file:///d/val.jsonl"}},
}


@pytest.mark.parametrize("case", SPECS, ids=list(SPECS))
def test_operator_config_is_accepted_by_the_runner(case):
    spec = FineTuneJobSpec.model_validate({**BASE, **SPECS[case]})
    config = runner_config(BODY, spec, spec.method, Settings())
    parsed = runner_config_model.model_validate(config)
    assert parsed.method == spec.method
    assert parsed.output.path == "/mnt/pvc/models/out"


def _pod(exit_code: int, message: str) -> dict:
    return {"metadata": {"name": "ft-x"}, "status": {"phase": "Failed" if exit_code else "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}


def test_runner_termination_messages_read_by_the_operator():
    ok = termination.fit_to_limit(termination.build_message("Succeeded", "Completed", "done", metrics={"train_loss": 0.3},
                                                             output_path="/mnt/pvc/models/out", global_step=120))
    report = termination_report(_pod(0, ok))
    assert report["artifactUri"] == "/mnt/pvc/models/out" and report["metrics"] == {"train_loss": 0.3}
    huge = termination.build_message("Failed", "CUDAOutOfMemory", "x" * 10000, metrics={f"m{i}": i for i in range(500)})
    failure = failure_of([_pod(1, termination.fit_to_limit(huge))], {})
    assert failure.reason == "CUDAOutOfMemory" and not failure.permanent


def test_runner_bad_input_is_a_permanent_failure_for_the_operator(tmp_path):
    """The real runner process on a config naming a missing model: exit 2, and the operator will not retry."""
    model = tmp_path / "no-such-model"
    log = tmp_path / "termination-log"
    config = {
        "model": {"path": str(model)}, "dataset": {"path": str(tmp_path / "missing.jsonl")}, "method": "lora",
        "output": {"path": str(tmp_path / "out")}, "metrics": {"port": 0}, "terminationMessagePath": str(log),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "llmops_runners.finetune", "--config", str(tmp_path / "config.json")],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    failure = failure_of([_pod(proc.returncode, log.read_text())], {})
    assert failure.permanent and "no-such-model" in failure.message
