"""A tiny model and a task it can learn, made locally: for smoke tests of an install, and the tests.

`python -m llmops_runners.demo --out DIR` writes DIR/model (a randomly initialised Llama of
~100k parameters with a byte-level BPE tokenizer trained here on the task's text, saved with
save_pretrained), DIR/train.jsonl and DIR/held_out.jsonl. Nothing touches the network.

The task: each item has one fixed, arbitrary answer word; the question is asked in several
phrasings. Held-out examples pair an item with a phrasing never seen for that item during
training, so answering them needs the item->answer mapping, not memorised strings.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Iterable

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


BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# A minimal chat template, so the runner's chat-template path is the one tests exercise
# (real instruction models ship one). The EOS after each assistant turn teaches the model to stop.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + EOS + "{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400, chat_template: bool = True):
    """Train a byte-level BPE tokenizer on `texts`; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE if chat_template else None,
    )


def tiny_llama_config(vocab_size: int, hidden: int = 64, layers: int = 2, **overrides):
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def make_tiny_model(path: Path, texts: Iterable[str], seed: int = 0, chat_template: bool = True,
                    hidden: int = 64, layers: int = 2, head_scale: float = 10.0) -> Path:
    """Save a tiny randomly initialised Llama and its tokenizer to `path`; returns `path`."""
    import torch
    from transformers import LlamaForCausalLM

    path = Path(path)
    tokenizer = train_tokenizer(texts, chat_template=chat_template)
    config = tiny_llama_config(
        len(tokenizer), hidden=hidden, layers=layers,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # At hidden 64 a head initialised at std 0.02 caps every logit near 1, so no adapter could
        # make one answer likely; a trained LM's head is far more decisive. Scale it up to match.
        model.lm_head.weight.mul_(head_scale)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops_runners.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write model/, train.jsonl and held_out.jsonl into")
    args = parser.parse_args(argv)
    train, held_out = instruction_examples()
    make_tiny_model(args.out / "model", corpus_texts())
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "held_out.jsonl", held_out)
    print(f"wrote {args.out}/model, train.jsonl ({len(train)} examples) and held_out.jsonl ({len(held_out)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
