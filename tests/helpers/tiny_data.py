"""A synthetic instruction task a tiny model can learn in a few dozen steps.

Each item has one fixed, arbitrary answer word; the question is asked in several phrasings.
Held-out examples pair an item with a phrasing never seen for that item during training, so
answering them needs the item->answer mapping, not memorised strings.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = ["apple", "river", "stone", "cloud", "tiger", "lamp", "forest", "engine",
         "violin", "garden", "rocket", "mirror", "candle", "island", "bridge", "pepper"]
ANSWERS = ["red", "blue", "green", "gold", "black", "white", "pink", "grey"]
PHRASINGS = [
    "What colour is the {item}?",
    "Name the colour of the {item}.",
    "Tell me which colour the {item} has.",
    "The {item} is which colour?",
]


def answer_for(item: str) -> str:
    # Deterministic but arbitrary: the model can only get it right by learning the table.
    return ANSWERS[(ITEMS.index(item) * 5 + 3) % len(ANSWERS)]


def instruction_examples(system: bool = False) -> tuple[list[dict], list[dict]]:
    """Return (train, held_out) lists of {instruction, output[, system]} records."""
    train, held_out = [], []
    for i, item in enumerate(ITEMS):
        for j, phrasing in enumerate(PHRASINGS):
            record = {"instruction": phrasing.format(item=item), "input": "", "output": answer_for(item)}
            if system:
                record["system"] = "Answer with one word."
            (held_out if j == i % len(PHRASINGS) else train).append(record)
    random.Random(0).shuffle(train)
    return train, held_out


def as_chat(record: dict) -> dict:
    return {"messages": [{"role": "user", "content": record["instruction"]},
                         {"role": "assistant", "content": record["output"]}]}


def as_text(record: dict) -> dict:
    return {"text": f"{record['instruction']} {record['output']}"}


def corpus_texts() -> list[str]:
    """Every string the tokenizer should know, so it is trained on the task's vocabulary."""
    train, held_out = instruction_examples(system=True)
    texts = []
    for r in train + held_out:
        texts += [r["instruction"], r["output"], r["system"]]
    return texts * 3


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
