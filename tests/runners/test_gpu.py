"""GPU-only paths: QLoRA (bitsandbytes 4-bit), DeepSpeed with bf16 and offload, torchrun across GPUs."""
import json

import pytest
import torch

from .runner_support import run_cli, termination

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="QLoRA needs CUDA: bitsandbytes' 4-bit NF4 kernels do not run on CPU")
def test_qlora_trains_in_4bit_and_merges(make_config, tmp_path):
    config = make_config(method="qlora", training={"maxSteps": 60, "precision": "bf16"},
                         qlora={"quantType": "nf4", "computeDtype": "bfloat16", "doubleQuant": True},
                         output={"mergeLora": True})
    result = run_cli(config)
    assert result.returncode == 0, result.stderr[-3000:]
    message = termination(config)
    assert message["metrics"]["evalLoss"] < message["metrics"]["evalLossStart"]
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="DeepSpeed's bf16 ZeRO-3 with CPU offload is exercised on CUDA; CPU runs are in test_deepspeed")
def test_deepspeed_zero3_offload_bf16_on_gpu(make_config):
    config = make_config(method="full", deepspeed={"zeroStage": 3, "offloadOptimizer": True, "offloadParams": True},
                         training={"maxSteps": 20, "precision": "bf16", "learningRate": 2e-3})
    result = run_cli(config, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert termination(config)["deepspeedZeroStage"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 2, reason="torchrun data parallelism needs at least 2 CUDA GPUs")
def test_torchrun_relaunch_on_two_gpus(make_config):
    config = make_config(method="lora", deepspeed={"zeroStage": 2}, training={"maxSteps": 20, "precision": "bf16"})
    result = run_cli(config, timeout=600, NPROC_PER_NODE="2", NNODES="1", MASTER_PORT="29531")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "under torchrun" in result.stderr
    assert termination(config)["globalStep"] == 20
