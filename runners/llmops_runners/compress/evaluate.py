"""Measuring a model: quality on the evaluation set, greedy agreement, CPU latency, size.

Quality comes from logits only (no model's own loss), so a transformers model, an ONNX Runtime
session behind Optimum and a compressed-tensors checkpoint are measured by the same code.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX
from ..errors import BadInputError
from . import examples

HIGHER_IS_BETTER = {"accuracy": True, "exact-match": True, "perplexity": False}
BATCH = 16
MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class Quality:
    metric: str
    value: float


def check_metric(metric: str, task: str) -> None:
    if metric == "perplexity" and task != "causal-lm":
        raise BadInputError("The evaluation metric perplexity applies to causal language models; use accuracy for a sequence classifier.")


@torch.no_grad()
def quality(model, tokenizer, task: str, path: str, metric: str, max_len: int, limit: int) -> Quality:
    check_metric(metric, task)
    if task == "sequence-classification":
        return Quality(metric, _classification_accuracy(model, tokenizer, path, max_len, limit))
    if metric == "perplexity":
        return Quality(metric, _perplexity(model, tokenizer, path, max_len, limit))
    prompts = [p for p in examples.prompts(tokenizer, path, limit) if p.answer is not None]
    if not prompts:
        raise BadInputError(f"The evaluation data {path!r} has no replies to compare with ({metric} needs instruction or chat records).")
    answers = generate(model, tokenizer, [p.text for p in prompts])
    return Quality(metric, sum(a.strip() == p.answer.strip() for a, p in zip(answers, prompts)) / len(prompts))


def _classification_accuracy(model, tokenizer, path: str, max_len: int, limit: int) -> float:
    hits = total = 0
    for batch in examples.batches("sequence-classification", tokenizer, path, max_len, BATCH, limit):
        labels = batch.pop("labels")
        logits = model(**batch).logits
        hits += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return hits / total


def _perplexity(model, tokenizer, path: str, max_len: int, limit: int) -> float:
    nll = tokens = 0.0
    for batch in examples.batches("causal-lm", tokenizer, path, max_len, BATCH, limit):
        labels = batch.pop("labels")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        mask = shift_labels != IGNORE_INDEX
        losses = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1).clamp(min=0), reduction="none")
        nll += float((losses * mask.reshape(-1)).sum())
        tokens += float(mask.sum())
    return math.exp(nll / max(tokens, 1.0))


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy replies, one prompt at a time (no padding, so no padding side to get wrong)."""
    replies = []
    for text in prompts:
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=not getattr(tokenizer, "chat_template", None))
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        replies.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return replies


def greedy_agreement(reference: list[str], candidate: list[str]) -> float:
    """Fraction of prompts on which two models' greedy replies are the same."""
    return sum(a.strip() == b.strip() for a, b in zip(reference, candidate)) / max(len(reference), 1)


def latency_seconds(model, tokenizer, text: str, repeats: int = 10) -> float:
    """Median wall time of one forward pass on one sequence, on this CPU, after a warm-up."""
    return forward_seconds(model, dict(tokenizer(text, return_tensors="pt")), repeats)


@torch.no_grad()
def forward_seconds(model, inputs: dict, repeats: int = 10) -> float:
    """Median wall time of `model(**inputs)` after one warm-up call (the median: this CPU is shared)."""
    model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def drop(before: Quality, after: Quality) -> float:
    """Relative loss of quality (positive = worse), whichever way the metric points."""
    if before.value == 0:
        return 0.0 if after.value == before.value else math.inf
    change = (before.value - after.value) / abs(before.value)
    return change if HIGHER_IS_BETTER[before.metric] else -change
