"""Helpers the runner tests share: run the runner in-process or as a CLI and read what it reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def termination(config_path: Path) -> dict:
    return json.loads(Path(json.loads(config_path.read_text())["terminationMessagePath"]).read_text())


def run_in_process(config_path: Path) -> tuple[int, dict]:
    from llmops_runners.finetune import main

    code = main(["--config", str(config_path)])
    return code, termination(config_path)


def runner_command(config_path: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "llmops_runners.finetune"]
    return cmd + (["--config", str(config_path)] if config_path else [])


def runner_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "runners"), os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_cli(config_path: Path | None, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(runner_command(config_path), env=runner_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def is_one_sentence(message: str) -> bool:
    return bool(message) and "\n" not in message and message.endswith(".") and ". " not in message[:-1]
