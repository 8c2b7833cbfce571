"""The response bodies and stream chunks of vLLM's OpenAI server (field for field where clients read them)."""
from __future__ import annotations

import json
import uuid


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": None}


def completion(rid: str, created: int, model: str, text: str, finish_reason: str, stop_reason: str | None, counts: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                         "stop_reason": stop_reason, "prompt_logprobs": None}],
            "usage": counts, "system_fingerprint": None}


def completion_chunk(rid: str, created: int, model: str, text: str, finish_reason: str | None = None,
                     stop_reason: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}]}


def chat_completion(rid: str, created: int, model: str, text: str, finish_reason: str, stop_reason: str | None, counts: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                         "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}],
            "usage": counts, "prompt_logprobs": None, "system_fingerprint": None}


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
               stop_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}]}


def usage_chunk(rid: str, created: int, model: str, obj: str, counts: dict) -> dict:
    """The last chunk when the client asked for stream_options.include_usage: no choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": counts}


def model_card(name: str, created: int, root: str, parent: str | None = None, max_model_len: int | None = None) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": root, "parent": parent,
            "max_model_len": max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}


def sse(body: dict | str) -> str:
    """One server-sent event, as OpenAI streams them: `data: <json>` and a blank line."""
    return f"data: {body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)}\n\n"


DONE = sse("[DONE]")
