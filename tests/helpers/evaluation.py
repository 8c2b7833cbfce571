"""Measure how well a causal LM answers the tiny instruction task (greedy decoding, exact match)."""
from __future__ import annotations

import torch


def prompt_for(tokenizer, instruction: str) -> str:
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate_answer(model, tokenizer, instruction: str, max_new_tokens: int = 6) -> str:
    enc = tokenizer(prompt_for(tokenizer, instruction), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def answer_accuracy(model, tokenizer, records: list[dict]) -> float:
    """Fraction of records whose greedy answer equals the expected output exactly."""
    model.eval()
    hits = sum(generate_answer(model, tokenizer, r["instruction"]) == r["output"] for r in records)
    return hits / len(records)
