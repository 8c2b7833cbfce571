"""Acceptance 5 (CPU part): real DeepSpeed ZeRO runs on the CPU accelerator (DS_ACCELERATOR=cpu)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from .runner_support import run_cli, runner_env, termination
from .test_resume_and_metrics import free_port

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


def test_zero3_each_rank_loads_only_its_shard(make_config, tmp_path):
    # Under ZeRO-3 the model must be partitioned while it loads; loading it whole on every rank is
    # exactly the memory ZeRO-3 exists to avoid. Two CPU processes load it through the runner's setup.
    config = make_config(method="full", deepspeed={"zeroStage": 3})
    reports = tmp_path / "reports"
    reports.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
               str(Path(__file__).with_name("zero3_load_probe.py")), str(config), str(reports)]
    result = subprocess.run(command, env=runner_env(DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((reports / f"rank-{rank}.json").read_text())
        assert 0.4 <= report["local"] / report["full"] <= 0.6, report
        assert report["counted"] == report["full"]  # the reported parameter count is the whole model's
