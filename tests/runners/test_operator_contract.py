"""The seam with the operator: the config its builder writes is what the runner reads, and trains."""
import json

import pytest

from llmops_runners.config import parse_config

from .runner_support import run_in_process

build = pytest.importorskip("llmops.controllers.finetune.builders", reason="the operator package is not installed")
from llmops.api.finetune import FineTuneJobSpec  # noqa: E402
from llmops.settings import Settings  # noqa: E402

SPECS = {
    "lora": {},
    "qlora": {"qlora": {"quantType": "nf4"}, "deepspeed": {"zeroStage": 2, "offloadOptimizer": True}},
    "freeze": {"freeze": {"trainableLayers": 1}, "training": {"earlyStopping": {"patience": 2}, "evalSteps": 10}},
    "prompt-tuning": {"promptTuning": {"numVirtualTokens": 8, "initText": "Answer"}},
    "full": {"resources": {"nodes": 2, "gpusPerNode": 8, "gpuType": "NVIDIA-H100-80GB-HBM3"}, "deepspeed": {"zeroStage": 3}},
}


def operator_config(method: str, **spec_changes) -> dict:
    spec = {"baseModel": {"uri": "pvc://models/base", "parameterCount": 1_000_000},
            "dataset": {"uri": "pvc://data/train.jsonl"}, "method": method,
            "resources": {"gpusPerNode": 1, "gpuType": "NVIDIA-H100-80GB-HBM3"}, "output": {"uri": "pvc://models/out"},
            **spec_changes}
    body = {"kind": "FineTuneJob", "metadata": {"name": "ft", "namespace": "ns", "uid": "u"}, "spec": spec}
    return build.runner_config(body, FineTuneJobSpec.model_validate(spec), method, Settings())


@pytest.mark.parametrize("method", list(SPECS))
def test_operator_written_config_parses(method):
    cfg = parse_config(operator_config(method, **SPECS[method]))
    assert cfg.method == method
    assert (cfg.deepspeed is not None) == ("deepspeed" in SPECS[method])


def test_operator_written_config_trains_on_cpu(tmp_path, tiny_model, task):
    raw = operator_config("lora", training={"maxSteps": 8, "precision": "bf16", "gradientCheckpointing": True})
    # Only the paths change: inside a pod they are the PVC mounts the operator resolved.
    raw["model"]["path"] = str(tiny_model)
    raw["dataset"]["path"] = str(task["train_path"])
    raw["output"]["path"] = str(tmp_path / "out")
    raw["metrics"]["port"] = None
    raw["terminationMessagePath"] = str(tmp_path / "termination-log")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    code, message = run_in_process(config)
    assert code == 0, message
    assert message["globalStep"] == 8 and message["precision"] == "bf16"
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
