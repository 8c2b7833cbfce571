"""The config contract: the documented example parses, defaults fill in, bad input reads as one sentence."""
import json

import pytest

from llmops_runners.config import load_config, parse_config
from llmops_runners.errors import BadInputError

from .runner_support import is_one_sentence

CONTRACT_EXAMPLE = {
    "jobName": "demo", "namespace": "default",
    "model": {"path": "/models/base", "revision": None, "tokenEnv": "HF_TOKEN"},
    "dataset": {"path": "/data/train.jsonl", "format": "instruction", "validationSplit": 0.1, "validationPath": None},
    "method": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": None},
    "qlora": {"quantType": "nf4", "computeDtype": "bfloat16", "doubleQuant": True},
    "freeze": {"trainableLayers": 2},
    "promptTuning": {"numVirtualTokens": 20, "initText": None},
    "training": {"epochs": 3, "maxSteps": None, "learningRate": 2e-4, "scheduler": "cosine", "warmupRatio": 0.03,
                 "weightDecay": 0.0, "perDeviceBatchSize": 4, "gradientAccumulationSteps": 1, "maxSeqLength": 2048,
                 "maxGradNorm": 1.0, "precision": "bf16", "gradientCheckpointing": False, "evalSteps": None,
                 "seed": 42, "earlyStopping": {"patience": 3, "threshold": 0.0}},
    "deepspeed": {"zeroStage": 0, "offloadOptimizer": False, "offloadParams": False},
    "checkpointing": {"everySteps": 500, "keepLast": 2, "resume": True},
    "output": {"path": "/output", "mergeLora": False},
    "metrics": {"port": 9400},
    "terminationMessagePath": "/dev/termination-log",
}

MINIMAL = {"model": {"path": "/m"}, "dataset": {"path": "/d.jsonl"}, "method": "full", "output": {"path": "/o"}}


def test_contract_example_parses_with_its_values():
    cfg = parse_config(CONTRACT_EXAMPLE)
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32
    assert cfg.training.early_stopping.patience == 3
    assert cfg.checkpointing.keep_last == 2
    assert cfg.deepspeed.zero_stage == 0
    assert cfg.metrics.port == 9400


def test_absent_blocks_get_defaults_and_deepspeed_stays_off():
    cfg = parse_config(dict(MINIMAL, lora=None, training=None))
    assert cfg.training.learning_rate == 2e-4 and cfg.training.scheduler == "cosine"
    assert cfg.lora.r == 16 and cfg.freeze.trainable_layers == 2
    assert cfg.checkpointing.resume is True
    assert cfg.deepspeed is None  # DeepSpeed only when the spec asks for it
    assert cfg.termination_message_path == "/dev/termination-log"


@pytest.mark.parametrize("patch, expected", [
    ({"method": "dpo"}, "unknown method 'dpo'"),
    ({"model": None}, "'model'"),
    ({"output": {}}, "'output.path' is missing"),
    ({"training": {"learningRate": -1}}, "'training.learningRate'"),
    ({"training": {"batchSize": 4}}, "unknown field 'training.batchSize'"),
    ({"deepspeed": {"zeroStage": 2, "offloadParams": True}}, "offloadParams needs zeroStage 3"),
    ({"deepspeed": {"zeroStage": 4}}, "'deepspeed.zeroStage'"),
])
def test_bad_values_give_one_sentence_naming_the_field(patch, expected):
    with pytest.raises(BadInputError) as caught:
        parse_config({**MINIMAL, **patch})
    message = str(caught.value)
    assert expected in message
    assert is_one_sentence(message), message


def test_load_config_reports_missing_file_and_bad_json(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        load_config(broken)


def test_load_config_falls_back_to_env(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(MINIMAL))
    monkeypatch.setenv("LLMOPS_CONFIG", str(path))
    assert load_config(None).method == "full"
