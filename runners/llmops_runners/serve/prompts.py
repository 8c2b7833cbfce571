"""A request's prompt as token ids, and its sampling parameters checked against the server's limits.

The limits and their messages are vLLM's (which are OpenAI's): a prompt must leave room for at
least one token within maxModelLen, and prompt + max_tokens may not exceed it. max_tokens left
out of a chat request means "as many as fit" (capped by maxTokensLimit), as in vLLM.
"""
from __future__ import annotations

from .errors import bad_request
from .sampling import SamplingParams


def completion_ids(tokenizer, prompt: str | list[int], vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is out of vocabulary (0..{vocab_size - 1}).", "prompt")
        ids = list(prompt)
    if not ids:
        raise bad_request("The prompt is empty.", "prompt")
    return ids


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Through the tokenizer's chat template when it has one (the template adds BOS and the assistant
    turn's opening), else a plain "role: content" transcript ending with "assistant:"."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # noqa: BLE001 - jinja's TemplateError, or a template's raise_exception()
            raise bad_request(f"The model's chat template refused the messages: {error}", "messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids:
        raise bad_request("The messages are empty.", "messages")
    return ids


def sampling_params(request, max_tokens: int | None, prompt_tokens: int, max_model_len: int, max_tokens_limit: int) -> SamplingParams:
    if prompt_tokens >= max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                          f"{prompt_tokens} input tokens. Please reduce the length of the input messages.", "messages"
                          if hasattr(request, "messages") else "prompt")
    if max_tokens is None:
        max_tokens = min(max_model_len - prompt_tokens, max_tokens_limit)
    elif max_tokens < 1:
        raise bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    elif max_tokens > max_tokens_limit:
        raise bad_request(f"max_tokens must be at most {max_tokens_limit} on this server, got {max_tokens}.", "max_tokens")
    elif prompt_tokens + max_tokens > max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                          f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                          "completion). Please reduce the length of the messages or completion.", "max_tokens")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=request.stop_strings(),
        seed=request.seed,
    )
