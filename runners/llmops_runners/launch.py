"""Re-launch the runner under torchrun when the operator asks for several processes.

The operator sets NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT (and may set
WORLD_SIZE as the total process count). When more than one process is needed and we are not
already a torchrun worker, the entry point runs torchrun with the same config; torchrun starts
NPROC_PER_NODE workers here and rendezvouses with the other nodes' pods at MASTER_ADDR:MASTER_PORT.
DeepSpeed runs inside those workers through the Trainer, so no ssh-based `deepspeed` launcher
(which pods cannot use) is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import BadInputError


@dataclass(frozen=True)
class LaunchPlan:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    def command(self, config_path: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run",
                f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}",
                f"--nproc-per-node={self.nproc_per_node}",
                f"--master-addr={self.master_addr}", f"--master-port={self.master_port}",
                "-m", "llmops_runners.finetune", "--config", config_path]


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise BadInputError(f"Environment variable {name}={value!r} is not an integer.") from None


def plan_from_env(env: Mapping[str, str]) -> LaunchPlan | None:
    """The torchrun launch this process should do, or None to train in this process."""
    if "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env:
        return None  # already a worker
    nnodes = _int(env, "NNODES", 1)
    world_size = _int(env, "WORLD_SIZE", 0)
    nproc = _int(env, "NPROC_PER_NODE", max(1, world_size // max(nnodes, 1)))
    if nnodes * nproc <= 1:
        return None
    if nnodes > 1 and not env.get("MASTER_ADDR"):
        raise BadInputError("A multi-node run needs MASTER_ADDR set to the rank-0 pod's address.")
    return LaunchPlan(nnodes=nnodes, node_rank=_int(env, "NODE_RANK", 0), nproc_per_node=nproc,
                      master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(env, "MASTER_PORT", 29500))


def run_plan(plan: LaunchPlan, config_path: str) -> int:
    env = dict(os.environ, LLMOPS_CONFIG=config_path)
    return subprocess.run(plan.command(config_path), env=env).returncode


def is_local_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if "LOCAL_RANK" in os.environ else 1
