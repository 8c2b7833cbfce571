"""The synthetic instruction task of the tests: the runner's demo task (llmops_runners.demo)."""
from __future__ import annotations

from llmops_runners.demo import (  # noqa: F401
    ANSWERS, ITEMS, PHRASINGS, answer_for, as_chat, as_text, corpus_texts, instruction_examples, write_jsonl,
)
