"""Acceptance 7: bad config or input exits 2 with one sentence naming the problem, in the termination message."""
import json

import pytest

from .runner_support import is_one_sentence, run_cli, termination


@pytest.mark.parametrize("overrides, expected", [
    ({"method": "rlhf"}, "unknown method 'rlhf'"),
    ({"dataset": {"path": "/nonexistent/train.jsonl"}}, "Dataset file '/nonexistent/train.jsonl' does not exist"),
    ({"lora": {"targetModules": ["q_proj", "query_key_value"]}}, "LoRA target module 'query_key_value' is not in the model"),
    ({"model": {"path": "/nonexistent/model"}}, "Model path '/nonexistent/model' does not exist"),
], ids=["unknown-method", "missing-dataset", "unknown-target-module", "missing-model"])
def test_bad_input_exits_2_with_one_sentence(make_config, overrides, expected):
    config = make_config(**overrides)
    result = run_cli(config)
    assert result.returncode == 2, result.stderr[-2000:]
    message = termination(config)
    assert message["status"] == "Failed" and message["reason"] == "InvalidInput"
    assert expected in message["message"]
    assert is_one_sentence(message["message"]), message["message"]
    assert message["message"] in result.stderr  # a person running it by hand sees the same sentence
    assert "Traceback" not in result.stderr


def test_config_from_env_and_unreadable_config(tmp_path, make_config):
    config = make_config(method="nope")
    result = run_cli(None, LLMOPS_CONFIG=str(config))
    assert result.returncode == 2 and "unknown method 'nope'" in termination(config)["message"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"terminationMessagePath": str(tmp_path / "t.log")})[:-1])
    result = run_cli(broken)
    assert result.returncode == 2 and "is not valid JSON" in result.stderr
