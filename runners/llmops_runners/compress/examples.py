"""Data for compression: evaluation, calibration, distillation and recovery, for both tasks.

Causal LMs read the fine-tuning runner's formats (instruction, chat, text: `..data`), so a
FineTuneJob's dataset is a CompressionJob's too. Sequence classifiers read `{"text", "label"}`
records with integer labels.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Iterator

import torch

from ..data import PadCollator, detect_format, read_records, render, to_messages, tokenize_records
from ..errors import BadInputError


@dataclass(frozen=True)
class Prompt:
    text: str  # what the model sees, with the generation prompt
    answer: str | None  # the expected reply (instruction and chat records)


def records(path: str, limit: int | None = None) -> list[dict]:
    found = read_records(path)
    return found[:limit] if limit else found


def _labelled(rows: list[dict], path: str) -> list[tuple[str, int]]:
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("text"), str) or not isinstance(r.get("label"), int) or isinstance(r.get("label"), bool):
            raise BadInputError(f"Record {i + 1} of {path!r} needs a string 'text' and an integer 'label' (a sequence classifier's data).")
        out.append((r["text"], r["label"]))
    return out


def _classification_batch(tokenizer, rows: list[tuple[str, int]], max_len: int) -> dict[str, torch.Tensor]:
    enc = tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    enc["labels"] = torch.tensor([label for _, label in rows])
    return dict(enc)


def batches(task: str, tokenizer, path: str, max_len: int, batch_size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The records of `path` as model inputs with `labels`, in order (for evaluation)."""
    rows = records(path, limit)
    if task == "sequence-classification":
        labelled = _labelled(rows, path)
        return [_classification_batch(tokenizer, labelled[i:i + batch_size], max_len) for i in range(0, len(labelled), batch_size)]
    dataset = tokenize_records(tokenizer, rows, detect_format(rows, path), max_len, path)
    collate = PadCollator(_pad_id(tokenizer))
    items = dataset.examples
    return [collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def training_batches(task: str, tokenizer, path: str, max_len: int, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of `path` (for distillation and recovery)."""
    rows = records(path)
    rng = random.Random(seed)
    if task == "sequence-classification":
        items: list = _labelled(rows, path)
        make = lambda chunk: _classification_batch(tokenizer, chunk, max_len)  # noqa: E731
    else:
        items = tokenize_records(tokenizer, rows, detect_format(rows, path), max_len, path).examples
        make = PadCollator(_pad_id(tokenizer))
    for _ in itertools.count():
        order = items[:]
        rng.shuffle(order)
        full = max(1, len(order) // batch_size)  # whole batches only, unless there are fewer records than one
        for i in range(full):
            yield make(order[i * batch_size:(i + 1) * batch_size])


def texts(task: str, tokenizer, path: str, limit: int) -> list[str]:
    """Plain strings as the model sees them (for calibration)."""
    rows = records(path, limit)
    if task == "sequence-classification":
        return [t for t, _ in _labelled(rows, path)]
    fmt = detect_format(rows, path)
    if fmt == "text":
        return [r["text"] for r in rows]
    return [render(tokenizer, to_messages(r, fmt, i, path)) for i, r in enumerate(rows)]


def prompts(tokenizer, path: str, limit: int) -> list[Prompt]:
    """Generation prompts of a causal LM's records: the conversation up to the last reply."""
    rows = records(path, limit)
    fmt = detect_format(rows, path)
    out = []
    for i, r in enumerate(rows):
        if fmt == "text":
            words = r["text"].split()
            out.append(Prompt(" ".join(words[: max(1, len(words) // 2)]), None))
            continue
        messages = to_messages(r, fmt, i, path)
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        out.append(Prompt(render(tokenizer, messages[:last], add_generation_prompt=True), messages[last]["content"]))
    return out


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
