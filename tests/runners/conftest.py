"""Shared fixtures for the fine-tuning runner tests: a tiny local model, task data, config builder."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest

# Nothing in these tests may reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers
sys.path.insert(0, str(REPO / "runners"))

try:
    import torch  # noqa: F401
except ImportError:  # the finetune extra is not installed (pip install -e '.[finetune,dev]'): nothing here can run
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.helpers.tiny_data import corpus_texts
    from tests.helpers.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", corpus_texts())


@pytest.fixture(scope="session")
def task(tmp_path_factory) -> dict:
    from tests.helpers.tiny_data import instruction_examples, write_jsonl

    root = tmp_path_factory.mktemp("data")
    train, held_out = instruction_examples()
    return {"train_path": write_jsonl(root / "train.jsonl", train), "train": train, "held_out": held_out}


BASE_CONFIG = {
    "jobName": "test",
    "namespace": "default",
    "dataset": {"validationSplit": 0.15},
    "method": "lora",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "training": {"maxSteps": 30, "learningRate": 5e-3, "perDeviceBatchSize": 8, "precision": "fp32",
                 "evalSteps": 15, "loggingSteps": 10, "warmupRatio": 0.05, "seed": 42},
    "checkpointing": {"everySteps": 1000, "keepLast": 1},
    "metrics": {"port": None},
}


def deep_merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_config(tmp_path, tiny_model, task):
    """Write a runner config for the tiny model and task; keyword dicts override blocks."""

    def build(name: str = "config.json", **overrides) -> Path:
        cfg = deep_merge(BASE_CONFIG, {
            "model": {"path": str(tiny_model)},
            "dataset": {"path": str(task["train_path"])},
            "output": {"path": str(tmp_path / "out")},
            "terminationMessagePath": str(tmp_path / "termination-log"),
        })
        cfg = deep_merge(cfg, overrides)
        path = tmp_path / name
        path.write_text(json.dumps(cfg))
        return path

    return build
