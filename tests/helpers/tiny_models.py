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


def make_lora_adapter(base, out, seed: int = 0, scale: float = 0.05):
    """A LoRA adapter on `base` with non-zero B matrices (so it changes answers), saved as the
    fine-tuning runner saves one: adapter weights, adapter_config.json naming the base, tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
