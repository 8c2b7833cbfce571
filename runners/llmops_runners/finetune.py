"""Entry point: `python -m llmops_runners.finetune --config config.json` (or LLMOPS_CONFIG=config.json).

Exit codes: 0 success, 2 bad config or input (the operator must not retry), 143 stopped by SIGTERM,
1 anything else.
Either way a JSON summary goes to the config's terminationMessagePath.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .config import load_config, termination_path_from_raw
from .errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TERMINATED, BadInputError, RunnerFailure
from .logs import setup_logging
from .launch import is_local_main_process, plan_from_env, run_plan
from .termination import build_message, write_termination_message

log = logging.getLogger("llmops_runners.finetune")


def _report_failure(path: str | None, reason: str, message: str) -> None:
    print(message, file=sys.stderr)
    if is_local_main_process():
        write_termination_message(path, build_message("Failed", reason, message))


def _worker_outcome(path: str, returncode: int) -> int:
    """After torchrun: keep the workers' exit class (2 vs 1), which torchrun itself flattens to 1."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        body = None
    if returncode == 0:
        return EXIT_OK
    if body and body.get("status") == "Failed":
        return EXIT_BAD_INPUT if body.get("reason") == "InvalidInput" else EXIT_FAILED
    write_termination_message(path, build_message(
        "Failed", "WorkerFailed", f"A training process exited with code {returncode} without reporting why."))
    return EXIT_FAILED


def _stop_training(signum: int, frame: object) -> None:
    """Kubernetes stops a pod with SIGTERM to its PID 1: here, this process when it trains itself.
    PID 1 ignores signals it has no handler for, so without this one the pod would train on until
    the grace period ends in SIGKILL, and report nothing."""
    raise RunnerFailure("Terminated", "The runner was stopped by SIGTERM before training finished.", EXIT_TERMINATED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops_runners.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="runner config JSON (default: $LLMOPS_CONFIG)")
    args = parser.parse_args(argv)
    setup_logging()
    config_path = args.config or os.environ.get("LLMOPS_CONFIG")
    termination = termination_path_from_raw(config_path)
    try:
        cfg = load_config(config_path)
        termination = cfg.termination_message_path
        plan = plan_from_env(os.environ)
        if plan is not None:
            return _worker_outcome(termination, run_plan(plan, str(Path(config_path).resolve())))

        from .train import run  # torch is imported only once we know we train in this process

        signal.signal(signal.SIGTERM, _stop_training)
        result = run(cfg)
    except BadInputError as error:
        _report_failure(termination, "InvalidInput", str(error))
        return EXIT_BAD_INPUT
    except RunnerFailure as error:
        _report_failure(termination, error.reason, str(error))
        return error.exit_code
    except Exception as error:  # noqa: BLE001 - every failure must reach the termination message
        log.exception("training failed")
        detail = (str(error).strip().splitlines() or [""])[0][:300]
        _report_failure(termination, "TrainingFailed", f"Training failed with {type(error).__name__}: {detail}".rstrip(": ") + ".")
        return EXIT_FAILED
    if is_local_main_process():
        write_termination_message(termination, build_message(
            "Succeeded", "Completed", f"Training finished at step {result.global_step}; artifacts are in {result.output_path}.",
            metrics=result.metrics, output_path=result.output_path, global_step=result.global_step,
            extra={k: v for k, v in result.extra.items() if v is not None}))
    log.info("done: %s", json.dumps({"globalStep": result.global_step, **result.metrics}, default=str))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
