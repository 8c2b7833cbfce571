"""Acceptance 5 (CPU part): real DeepSpeed ZeRO runs on the CPU accelerator (DS_ACCELERATOR=cpu)."""
import importlib.util

import pytest
from transformers import AutoModelForCausalLM

from .runner_support import run_cli, termination

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (it comes with the finetune extra)")


@pytest.mark.parametrize("stage, method", [(2, "lora"), (3, "full")])
def test_deepspeed_zero_trains_on_cpu(make_config, tmp_path, stage, method):
    config = make_config(method=method, deepspeed={"zeroStage": stage},
                         training={"maxSteps": 20, "learningRate": 2e-3 if method == "full" else 5e-3})
    # The first run JIT-compiles DeepSpeed's shared-memory comm op (cached afterwards), hence the timeout.
    result = run_cli(config, timeout=400, DS_ACCELERATOR="cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    message = termination(config)
    assert message["deepspeedZeroStage"] == stage
    assert message["metrics"]["evalLoss"] < message["metrics"]["evalLossStart"]
    out = tmp_path / "out"
    if method == "full":
        # ZeRO-3 shards parameters; the saved model must be the gathered whole, loadable as usual.
        model = AutoModelForCausalLM.from_pretrained(out)
        assert sum(p.numel() for p in model.parameters()) == message["metrics"]["totalParameters"]
    else:
        assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints").is_dir()
