"""Build a tiny Llama-style causal LM and a locally trained tokenizer, saved with save_pretrained.

Nothing here touches the network: the tokenizer is trained with `tokenizers` on the text it
will see, and the model is initialised from a config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

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


def realistic_llama_config(vocab_size: int = 32000):
    """Shaped like TinyLlama-1.1B (hidden 2048, 22 layers, GQA); instantiate on the meta device only."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


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
