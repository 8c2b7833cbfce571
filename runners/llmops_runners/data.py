"""Training data: read JSON/JSONL records, render them as conversations, tokenize with a loss mask.

Instruction and chat records become a list of messages, rendered with the tokenizer's chat
template when it has one (or a plain "### Role:" layout when it does not). Only assistant text
carries a loss; prompt tokens get the label -100. Plain `text` records train on every token.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BadInputError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


# ---- reading -------------------------------------------------------------------------------

def read_records(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise BadInputError(f"Dataset file {path!r} does not exist.")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".json" or text.lstrip().startswith("["):
            records = json.loads(text)
            if isinstance(records, dict) and isinstance(records.get("data"), list):
                records = records["data"]
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise BadInputError(f"Dataset file {path!r} is not valid JSON/JSONL ({error.msg} at line {error.lineno}).") from None
    if not isinstance(records, list) or not records:
        raise BadInputError(f"Dataset file {path!r} holds no records.")
    if not all(isinstance(r, dict) for r in records):
        raise BadInputError(f"Dataset file {path!r} must hold JSON objects, one per record.")
    return records


def detect_format(records: list[dict], path: str) -> str:
    first = records[0]
    if "messages" in first:
        return "chat"
    if "instruction" in first and "output" in first:
        return "instruction"
    if "text" in first:
        return "text"
    raise BadInputError(
        f"Dataset file {path!r} has records with neither 'instruction'/'output', 'messages' nor 'text' keys."
    )


def to_messages(record: dict, fmt: str, index: int, path: str) -> list[dict]:
    """Instruction and chat records as a list of {role, content}; raises on a malformed record."""
    where = f"record {index + 1} of {path!r}"
    if fmt == "instruction":
        if not isinstance(record.get("instruction"), str) or not isinstance(record.get("output"), str):
            raise BadInputError(f"Dataset {where} needs string 'instruction' and 'output' fields.")
        user = record["instruction"]
        if record.get("input"):
            user = f"{user}\n\n{record['input']}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": record["system"]})
        return messages
    messages = record.get("messages")
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
        raise BadInputError(f"Dataset {where} needs a 'messages' list of {{role, content}} objects.")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadInputError(f"Dataset {where} has no assistant message to learn from.")
    return messages


# ---- rendering -----------------------------------------------------------------------------

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text the model sees for `messages`; also used at inference to build prompts."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    parts = []
    for m in messages:
        suffix = (tokenizer.eos_token or "") if m["role"] == "assistant" else ""
        parts.append(f"### {m['role'].capitalize()}:\n{m['content']}{suffix}\n\n")
    if add_generation_prompt:
        parts.append("### Assistant:\n")
    return "".join(parts)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant reply in it.

    A reply's span runs from the end of the prompt that precedes it (with the generation prompt)
    to the end of the conversation rendered through that reply, so it includes the end-of-turn
    marker: the model must learn to stop.
    """
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if full.startswith(through) and through.startswith(prompt):
            spans.append((len(prompt), len(through.rstrip("\n"))))
    if not spans:
        # A template that is not prefix-stable: fall back to training on the whole conversation.
        spans = [(0, len(full))]
    return full, spans


# ---- tokenizing ----------------------------------------------------------------------------

def tokenize_example(tokenizer, record: dict, fmt: str, max_len: int, index: int, path: str) -> dict | None:
    if fmt == "text":
        if not isinstance(record.get("text"), str):
            raise BadInputError(f"Dataset record {index + 1} of {path!r} needs a string 'text' field.")
        text = record["text"] + (tokenizer.eos_token or "")
        ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
        return {"input_ids": ids, "labels": list(ids)}
    messages = to_messages(record, fmt, index, path)
    text, spans = assistant_spans(tokenizer, messages)
    # A chat template writes its own BOS; adding special tokens again would double it.
    enc = tokenizer(text, add_special_tokens=not has_chat_template(tokenizer), truncation=True,
                    max_length=max_len, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    if all(label == IGNORE_INDEX for label in labels):
        return None  # the reply was cut off by maxSeqLength: nothing to learn from
    return {"input_ids": enc["input_ids"], "labels": labels}


class TokenizedDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def token_count(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)


def tokenize_records(tokenizer, records: list[dict], fmt: str, max_len: int, path: str) -> TokenizedDataset:
    examples, dropped = [], 0
    for i, record in enumerate(records):
        example = tokenize_example(tokenizer, record, fmt, max_len, i, path)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    if dropped:
        log.warning("dropped %d of %d records of %s whose reply does not fit in maxSeqLength=%d",
                    dropped, len(records), path, max_len)
    if not examples:
        raise BadInputError(f"No record of {path!r} fits in maxSeqLength={max_len} with any reply tokens left.")
    return TokenizedDataset(examples)


@dataclass
class Splits:
    train: TokenizedDataset
    validation: TokenizedDataset | None
    format: str


def load_splits(tokenizer, dataset_cfg, max_len: int, seed: int) -> Splits:
    records = read_records(dataset_cfg.path)
    fmt = dataset_cfg.format or detect_format(records, dataset_cfg.path)
    if dataset_cfg.validation_path:
        val_records = read_records(dataset_cfg.validation_path)
    elif dataset_cfg.validation_split > 0 and len(records) > 1:
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        n_val = max(1, round(len(records) * dataset_cfg.validation_split))
        n_val = min(n_val, len(records) - 1)
        val_records, records = shuffled[:n_val], shuffled[n_val:]
    else:
        val_records = []
    train = tokenize_records(tokenizer, records, fmt, max_len, dataset_cfg.path)
    validation = (tokenize_records(tokenizer, val_records, fmt, max_len, dataset_cfg.validation_path or dataset_cfg.path)
                  if val_records else None)
    return Splits(train, validation, fmt)


class PadCollator:
    """Right-pads a batch; padding never counts in the loss."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in batch)
        ids, labels, mask = [], [], []
        for e in batch:
            pad = width - len(e["input_ids"])
            ids.append(e["input_ids"] + [self.pad_token_id] * pad)
            labels.append(e["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(e["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}
