"""Run by torchrun from test_deepspeed.py: load the model the way the runner does, report this rank's share.

Usage: zero3_load_probe.py CONFIG OUT_DIR; writes OUT_DIR/rank-<RANK>.json.
"""
import json
import os
import sys
from pathlib import Path

from llmops_runners.config import load_config
from llmops_runners.modeling import count_parameters
from llmops_runners.train import prepare

ready = prepare(load_config(sys.argv[1]))
local = full = 0
for p in ready.model.parameters():
    # A ZeRO-3 partitioned parameter keeps only its slice in ds_tensor (p itself is empty); any other is whole.
    local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    full += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
report = {"local": local, "full": full, "counted": count_parameters(ready.model)[1]}
Path(sys.argv[2], f"rank-{os.environ['RANK']}.json").write_text(json.dumps(report))
