"""Data loading: formats, chat templating, and the loss mask that trains only on replies."""
import json

import pytest

from llmops_runners.config import DatasetSource
from llmops_runners.data import IGNORE_INDEX, PadCollator, load_splits, read_records, tokenize_example
from llmops_runners.errors import BadInputError
from tests.helpers.tiny_data import corpus_texts
from tests.helpers.tiny_models import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts())


@pytest.fixture(scope="module")
def plain_tokenizer():
    return train_tokenizer(corpus_texts(), chat_template=False)


def trained_text(tok, example):
    return tok.decode([t for t, lab in zip(example["input_ids"], example["labels"]) if lab != IGNORE_INDEX])


INSTRUCTION = {"instruction": "What colour is the apple?", "input": "", "output": "red", "system": "Answer with one word."}


def test_instruction_record_trains_only_on_the_reply(tokenizer):
    example = tokenize_example(tokenizer, INSTRUCTION, "instruction", 128, 0, "mem")
    assert trained_text(tokenizer, example) == "red<|eos|>"
    assert "<|system|>" in tokenizer.decode(example["input_ids"])  # the system prompt is in the input


def test_fallback_template_without_chat_template(plain_tokenizer):
    example = tokenize_example(plain_tokenizer, INSTRUCTION, "instruction", 128, 0, "mem")
    text = plain_tokenizer.decode(example["input_ids"])
    assert "### User:" in text and "### Assistant:" in text
    assert trained_text(plain_tokenizer, example).strip() == "red<|eos|>"


def test_chat_record_trains_on_every_assistant_turn(tokenizer):
    record = {"messages": [{"role": "user", "content": "What colour is the river?"},
                           {"role": "assistant", "content": "blue"},
                           {"role": "user", "content": "And the stone?"},
                           {"role": "assistant", "content": "grey"}]}
    example = tokenize_example(tokenizer, record, "chat", 128, 0, "mem")
    assert trained_text(tokenizer, example) == "blue<|eos|>grey<|eos|>"


def test_text_record_trains_on_everything(tokenizer):
    example = tokenize_example(tokenizer, {"text": "The apple is red"}, "text", 128, 0, "mem")
    assert example["labels"] == example["input_ids"]


def test_reply_cut_off_by_max_length_is_dropped(tokenizer):
    assert tokenize_example(tokenizer, INSTRUCTION, "instruction", 4, 0, "mem") is None


def test_bad_record_names_the_record(tokenizer):
    with pytest.raises(BadInputError, match="record 3 of 'd.jsonl'"):
        tokenize_example(tokenizer, {"instruction": "x"}, "instruction", 64, 2, "d.jsonl")


def test_validation_split_and_format_detection(tmp_path, tokenizer):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": f"What colour is the apple {i}?", "output": "red"} for i in range(20)]))
    splits = load_splits(tokenizer, DatasetSource(path=str(path), validationSplit=0.25), 128, seed=1)
    assert splits.format == "instruction"
    assert len(splits.train) == 15 and len(splits.validation) == 5


def test_read_records_errors(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        read_records(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(BadInputError, match="line 1"):
        read_records(str(bad))


def test_collator_pads_without_adding_loss():
    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                         {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_separate_validation_file(tmp_path, tokenizer):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"text": f"The apple is red {i}"}) + "\n" for i in range(6)))
    val.write_text(json.dumps({"text": "The river is blue"}) + "\n")
    splits = load_splits(tokenizer, DatasetSource(path=str(train), validationPath=str(val)), 64, seed=0)
    assert splits.format == "text" and len(splits.train) == 6 and len(splits.validation) == 1
