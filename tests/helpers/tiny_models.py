"""Tiny models for the tests: the runner's demo model (llmops_runners.demo), and a realistic shape."""
from __future__ import annotations

from llmops_runners.demo import CHAT_TEMPLATE, make_tiny_model, tiny_llama_config, train_tokenizer  # noqa: F401


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
