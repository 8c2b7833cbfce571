"""Re-launch the runner under torchrun when the operator asks for several processes.

The operator sets NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT (and may set
WORLD_SIZE as the total process count). When more than one process is needed and we are not
already a torchrun worker, the entry point runs torchrun with the same config; torchrun starts
NPROC_PER_NODE workers here and rendezvouses with the other nodes' pods at MASTER_ADDR:MASTER_PORT.
DeepSpeed runs inside those workers through the Trainer, so no ssh-based `deepspeed` launcher
(which pods cannot use) is needed.

With several nodes the launcher first waits until MASTER_ADDR resolves: it names rank 0's pod
through a headless Service, which has no DNS record until that pod exists (rank 0 included: its
torchrun resolves the same name for its rendezvous store). While torchrun runs, the
launcher (the pod's PID 1) passes SIGTERM on to it, so that stopping the pod stops the workers.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import EXIT_TERMINATED, BadInputError, RunnerFailure

log = logging.getLogger(__name__)

MASTER_ADDR_WAIT_ENV = "LLMOPS_MASTER_ADDR_WAIT_SECONDS"
DEFAULT_MASTER_ADDR_WAIT_S = 300
POLL_S = 2.0


@dataclass(frozen=True)
class LaunchPlan:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    master_addr_wait_s: int = DEFAULT_MASTER_ADDR_WAIT_S

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
                      master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(env, "MASTER_PORT", 29500),
                      master_addr_wait_s=_int(env, MASTER_ADDR_WAIT_ENV, DEFAULT_MASTER_ADDR_WAIT_S))


def wait_for_address(host: str, timeout_s: float, stop_requested: Callable[[], bool] = lambda: False) -> None:
    """Return once `host` resolves (or a stop is requested); fail with RendezvousUnresolved at the deadline.

    A name that does not resolve yet is normal for a while (rank 0's pod is still being created),
    so every resolver error is retried; one that never resolves is worth a retry of the whole group
    (exit 1), not a permanent failure: the name comes from the operator, not from the user.
    """
    deadline = time.monotonic() + timeout_s
    for attempt in itertools.count():
        if stop_requested():
            return
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError as error:
            last_error = error.strerror or str(error)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunnerFailure("RendezvousUnresolved", f"The rank-0 address {host!r} (MASTER_ADDR) did not resolve "
                                f"within {timeout_s:g} seconds ({last_error}).")
        if attempt == 0:
            log.info("waiting up to %g s for MASTER_ADDR %s to resolve", timeout_s, host)
        time.sleep(min(POLL_S, remaining))


class _SigtermForwarder:
    """The launcher's SIGTERM handler: remember the signal and pass it on, once, to torchrun.

    Kubernetes stops a pod by sending SIGTERM to its PID 1, the launcher. Without a handler, PID 1
    ignores it (the kernel delivers to a namespace's init only the signals it handles), and any other
    process dies alone, leaving torchrun and its workers (each in a session of its own) running.
    torchrun stops its workers on SIGTERM; a second one would interrupt that, hence once.
    """

    def __init__(self):
        self.received = False
        self._child: subprocess.Popen | None = None
        self._forwarded = False

    def __call__(self, signum, frame) -> None:
        self.received = True
        self._forward()

    def run(self, command: list[str], env: dict) -> int:
        self._child = subprocess.Popen(command, env=env)
        self._forward()  # for a SIGTERM that came while it was starting
        return self._child.wait()

    def _forward(self) -> None:
        if self.received and self._child is not None and not self._forwarded:
            self._forwarded = True
            self._child.terminate()


def run_plan(plan: LaunchPlan, config_path: str) -> int:
    """Run torchrun here and return its exit code; RunnerFailure if it cannot start or SIGTERM stops it."""
    sigterm = _SigtermForwarder()
    previous = signal.signal(signal.SIGTERM, sigterm)
    returncode = None  # torchrun never started
    try:
        if plan.nnodes > 1:  # rank 0 as well: torchrun there resolves its own Service name
            wait_for_address(plan.master_addr, plan.master_addr_wait_s, lambda: sigterm.received)
        if not sigterm.received:
            log.info("launching %d process(es) on each of %d node(s) under torchrun", plan.nproc_per_node, plan.nnodes)
            returncode = sigterm.run(plan.command(config_path), dict(os.environ, LLMOPS_CONFIG=config_path))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if sigterm.received and returncode != 0:
        raise RunnerFailure("Terminated", "The runner was stopped by SIGTERM before training finished.", EXIT_TERMINATED)
    return returncode


def is_local_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if "LOCAL_RANK" in os.environ else 1
