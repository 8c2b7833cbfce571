"""What a client in the cluster does with an InferenceService: run inside the node's network
(the Service's ClusterIP is reachable there) by test_real_serving.py, with the official client.

    python openai_client.py <base url> <action> [model]    ->  one JSON object on stdout
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import openai

PROMPT = "The capital of France is"


def main(base: str, action: str, model: str | None = None) -> dict:
    api = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    if action == "models":
        return {"models": sorted(m.id for m in api.models.list().data)}
    if action == "complete":
        done = api.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
        return {"text": done.choices[0].text, "completion_tokens": done.usage.completion_tokens}
    if action == "chat":
        done = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
        return {"text": done.choices[0].message.content, "role": done.choices[0].message.role}
    if action == "stream":
        chunks = [c.choices[0].delta.content or "" for c in api.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True) if c.choices]
        return {"chunks": len(chunks), "text": "".join(chunks)}
    if action == "bad":
        raw = httpx.Client(base_url=base, timeout=60)
        replies = {
            "unknown model": raw.post("/completions", json={"model": "nope", "prompt": "hi"}),
            "malformed json": raw.post("/completions", content=b"{not json", headers={"Content-Type": "application/json"}),
            "empty prompt": raw.post("/completions", json={"model": model, "prompt": ""}),
            "absurd max_tokens": raw.post("/completions", json={"model": model, "prompt": "hi", "max_tokens": 10**9}),
        }
        return {k: {"status": r.status_code, "error": (r.json().get("error") or {}) if r.headers.get("content-type", "").startswith("application/json") else None}
                for k, r in replies.items()}
    if action == "concurrent":
        return asyncio.run(_concurrent(base, model, 64))
    raise SystemExit(f"unknown action {action}")


async def _concurrent(base: str, model: str, n: int) -> dict:
    api = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)

    async def one(i: int) -> bool:
        done = await api.completions.create(model=model, prompt=f"{PROMPT} {i}", max_tokens=8, temperature=0)
        return bool(done.choices) and done.usage.completion_tokens > 0

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    return {"ok": sum(r is True for r in results), "errors": [repr(r) for r in results if r is not True][:3]}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
