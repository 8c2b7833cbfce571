"""The serving runner over HTTP, as clients see it: the official openai client, httpx, /metrics.

One server process for the session (tiny Llama, the `support` adapter from its config); what it
answers greedily is compared with transformers / peft generating alone (conftest `reference`).
"""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from .serve_support import CHAT, MAX_TOKENS, PROMPTS, SERVED, metric


def test_health_answers_503_while_the_model_loads_then_200(server):
    # The port answers before the model is loaded (torch alone takes seconds to import).
    assert server.health_seen[0] == 503 and server.health_seen[-1] == 200


def test_models_lists_the_base_and_its_adapters_like_vllm(client, server, tiny):
    cards = {m.id: m for m in client.models.list().data}
    assert {SERVED, "support"} <= set(cards)
    base, support = cards[SERVED].model_dump(), cards["support"].model_dump()
    assert base["parent"] is None and base["root"] == str(tiny["model"]) and base["max_model_len"] == 256
    assert support["parent"] == SERVED and support["root"] == str(tiny["support"].resolve())
    assert base["object"] == "model" and base["owned_by"] == "vllm"


def test_completion_is_the_models_greedy_answer(client, reference):
    for prompt in PROMPTS:
        want = reference["base"]["prompt:" + prompt]
        got = client.completions.create(model=SERVED, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        choice = got.choices[0]
        assert choice.text == want["text"], prompt
        assert got.usage.prompt_tokens == want["prompt_tokens"] and got.usage.completion_tokens == len(want["ids"])
        assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
        assert choice.finish_reason == ("length" if len(want["ids"]) == MAX_TOKENS else "stop")
        assert got.object == "text_completion" and got.model == SERVED and got.id.startswith("cmpl-")


def test_chat_goes_through_the_chat_template(client, reference):
    want = reference["base"]["chat"]
    got = client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want["text"]
    assert got.usage.prompt_tokens == want["prompt_tokens"]  # the template's tokens: role markers, newlines
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")


def test_completion_streams_tokens_as_several_events(client):
    # 64 tokens: enough for several events even when the client falls behind and waiting deltas are sent as one.
    whole = client.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=64, temperature=0).choices[0]
    chunks = list(client.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=64, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) >= 3, texts
    assert "".join(texts) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert not chunks[-1].choices and (chunks[-1].usage.completion_tokens == 64 or whole.finish_reason == "stop")


def test_chat_streams_role_then_content_then_done(server, reference):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"model": SERVED, "messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == reference["base"]["chat"]["text"] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_an_adapter_by_name_answers_as_peft_does_and_not_as_the_base(client, reference):
    differs = 0
    for prompt in PROMPTS:
        got = client.completions.create(model="support", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        assert got.choices[0].text == reference["support"]["prompt:" + prompt]["text"], prompt
        assert got.model == "support"
        differs += got.choices[0].text != reference["base"]["prompt:" + prompt]["text"]
    assert differs >= len(PROMPTS) - 1  # the adapter changes the answers, not by chance on one prompt


def test_base_and_adapters_side_by_side_in_one_batch(server, reference):
    """Concurrent requests for the base and the adapter share decode steps (peft's per-row adapters):
    each must still get its own model's answer."""
    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
            jobs = [(model, prompt) for prompt in PROMPTS for model in (SERVED, "support")] * 2
            answers = await asyncio.gather(*[c.completions.create(model=m, prompt=p, max_tokens=MAX_TOKENS, temperature=0)
                                             for m, p in jobs])
            return jobs, answers

    jobs, answers = asyncio.run(run())
    for (model, prompt), answer in zip(jobs, answers):
        want = reference["base" if model == SERVED else model]["prompt:" + prompt]["text"]
        assert answer.choices[0].text == want, (model, prompt)


def test_stop_strings_end_the_text_before_them(client, reference):
    want = reference["base"]["prompt:" + PROMPTS[0]]["text"]
    stop = next(want[i:i + 2] for i in range(2, len(want) - 1) if want[i:i + 2].strip() and "\ufffd" not in want[i:i + 2])
    got = client.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, stop=[stop])
    assert got.choices[0].text == want[:want.index(stop)]
    assert got.choices[0].finish_reason == "stop" and got.choices[0].model_dump()["stop_reason"] == stop


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(client):
    def sample(seed):
        return client.completions.create(model=SERVED, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=1.0,
                                         top_p=0.9, seed=seed).choices[0].text

    greedy = client.completions.create(model=SERVED, prompt=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0).choices[0].text
    draws = {sample(seed) for seed in (1, 2, 3)}
    assert sample(1) == sample(1)
    assert len(draws) > 1 or greedy not in draws


def test_a_client_that_goes_away_frees_its_batch_slot(server, http):
    import time

    def aborted():
        return metric(http.get("/metrics").text, "vllm:request_success_total", model_name=SERVED, finished_reason="abort")

    before = aborted()
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"model": SERVED, "prompt": "lamp", "max_tokens": 250, "temperature": 0, "stream": True}) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert json.loads(first[6:])["choices"][0]["finish_reason"] is None  # it was still generating when the client left
    deadline = time.monotonic() + 30
    while aborted() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert aborted() == before + 1
    assert f'vllm:num_requests_running{{model_name="{SERVED}"}} 0.0' in http.get("/metrics").text


def test_load_lora_adapter_at_runtime_serves_it_without_restart(client, http, server, tiny, reference):
    pid = server.proc.pid
    body = {"lora_name": "billing", "lora_path": str(tiny["billing"])}
    r = http.post("/v1/load_lora_adapter", json=body)
    assert r.status_code == 200, r.text
    assert "billing" in {m.id for m in client.models.list().data}
    got = client.completions.create(model="billing", prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0)
    assert got.choices[0].text == reference["billing"]["prompt:" + PROMPTS[0]]["text"]
    assert got.choices[0].text != reference["support"]["prompt:" + PROMPTS[0]]["text"]
    assert server.alive() and server.proc.pid == pid

    assert http.post("/v1/load_lora_adapter", json=body).status_code == 200  # the same again: nothing to do
    other = http.post("/v1/load_lora_adapter", json={"lora_name": "billing", "lora_path": str(tiny["support"])})
    assert other.status_code == 400 and "already been loaded" in other.json()["error"]["message"]


@pytest.mark.parametrize("body, says", [
    ({"lora_name": "ghost", "lora_path": "/nonexistent/adapter"}, "does not exist"),
    ({"lora_name": "not-an-adapter", "lora_path": "MODEL"}, "adapter_config.json"),
    ({"lora_name": "wrong-shape", "lora_path": "BAD_SHAPE"}, "size mismatch"),
    ({"lora_name": SERVED, "lora_path": "SUPPORT"}, "base model's name"),
    ({"lora_name": "", "lora_path": "SUPPORT"}, "must be provided"),
    ({"lora_path": "SUPPORT"}, "lora_name"),
])
def test_load_lora_adapter_refuses_bad_adapters_with_400(http, server, tiny, client, body, says):
    paths = {"MODEL": str(tiny["model"]), "BAD_SHAPE": str(tiny["bad-shape"]), "SUPPORT": str(tiny["support"])}
    body = {k: paths.get(v, v) for k, v in body.items()}
    r = http.post("/v1/load_lora_adapter", json=body)
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    assert body.get("lora_name") not in {m.id for m in client.models.list().data} - {SERVED}
    assert client.completions.create(model="support", prompt="lamp", max_tokens=2).choices[0].text is not None
    assert server.alive()


def test_unload_lora_adapter_takes_its_name_away(client, http, tiny):
    http.post("/v1/load_lora_adapter", json={"lora_name": "temporary", "lora_path": str(tiny["billing"])}).raise_for_status()
    assert client.completions.create(model="temporary", prompt="lamp", max_tokens=2).choices
    r = http.post("/v1/unload_lora_adapter", json={"lora_name": "temporary"})
    assert r.status_code == 200, r.text
    assert "temporary" not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError) as gone:
        client.completions.create(model="temporary", prompt="lamp", max_tokens=2)
    assert gone.value.status_code == 404 and "temporary" in gone.value.body["message"]
    again = http.post("/v1/unload_lora_adapter", json={"lora_name": "temporary"})
    assert again.status_code == 400 and "cannot be found" in again.json()["error"]["message"]
    # The other adapters and the base are untouched.
    assert client.completions.create(model="support", prompt="lamp", max_tokens=2).choices


def test_metrics_count_requests_tokens_and_errors_under_vllms_names(client, http):
    def scrape():
        r = http.get("/metrics")
        assert r.status_code == 200
        return r.text

    before = scrape()
    got = client.completions.create(model=SERVED, prompt=PROMPTS[2], max_tokens=5, temperature=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SERVED, prompt="", max_tokens=5)
    after = scrape()

    def grew(name, by=None, **labels):
        change = metric(after, name, model_name=SERVED, **labels) - metric(before, name, model_name=SERVED, **labels)
        assert change == by if by is not None else change > 0, (name, labels, change)

    reason = got.choices[0].finish_reason
    grew("vllm:request_success_total", 1, finished_reason=reason)
    grew("vllm:prompt_tokens_total", got.usage.prompt_tokens)
    grew("vllm:generation_tokens_total", got.usage.completion_tokens)
    grew("vllm:time_to_first_token_seconds_count", 1)
    grew("vllm:e2e_request_latency_seconds_count", 1)
    grew("vllm:request_queue_time_seconds_count", 1)
    grew("vllm:inter_token_latency_seconds_count", got.usage.completion_tokens - 1)
    grew("vllm:time_per_output_token_seconds_count", got.usage.completion_tokens - 1)
    for status in ("2xx", "4xx"):  # vLLM's HTTP series: one good request, one refused
        requests = [metric(text, "http_requests_total", handler="/v1/completions", method="POST", status=status) for text in (before, after)]
        assert requests[1] - requests[0] == 1, (status, requests)
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert f'{gauge}{{model_name="{SERVED}"}} 0.0' in after


BAD_REQUESTS = [
    ("/v1/completions", {"model": "nope", "prompt": "hi"}, 404, "does not exist"),
    ("/v1/completions", {"model": SERVED, "prompt": ""}, 400, "empty"),
    ("/v1/completions", {"model": SERVED, "prompt": []}, 400, "empty"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "max_tokens": -3}, 400, "at least 1"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "max_tokens": 10**12}, 400, "at most"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "max_tokens": 256}, 400, "maximum context length"),
    ("/v1/completions", {"model": SERVED, "prompt": "apple " * 400}, 400, "maximum context length"),
    ("/v1/completions", {"model": SERVED, "prompt": [1, 2, 99999]}, 400, "out of vocabulary"),
    ("/v1/completions", {"model": SERVED, "prompt": ["a", "b"]}, 400, "one prompt"),
    ("/v1/completions", {"model": SERVED, "prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "n": 2}, 400, "n must be 1"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"model": SERVED, "prompt": "hi", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"model": SERVED}, 400, "prompt"),
    ("/v1/chat/completions", {"model": SERVED, "messages": []}, 400, "at least one message"),
    ("/v1/chat/completions", {"model": SERVED, "messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"model": SERVED, "messages": [{"role": "user", "content": ""}]}, 400, "no content"),
    ("/v1/chat/completions", {"model": SERVED, "messages": [{"content": "hi"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"model": SERVED, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text only"),
    ("/v1/chat/completions", {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "hi",', 400, "not valid JSON"),
    ("/v1/completions", b'[1, 2, 3]', 400, "JSON object"),
    ("/v1/completions", b"\xff\xfe not even text", 400, "JSON"),
    ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}, 400, "cannot be found"),
    ("/v1/nowhere", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("path, body, status, says", BAD_REQUESTS, ids=[f"{i}-{b[0].rsplit('/', 1)[-1]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_openai_style_errors_and_the_server_lives_on(http, server, path, body, status, says):
    if isinstance(body, bytes):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert says in error["message"] or says == error["param"], error
    assert http.get("/health").status_code == 200 and server.alive()


def test_64_concurrent_requests_all_succeed_and_are_batched(server, http):
    before = http.get("/metrics").text

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*[
                c.completions.create(model=SERVED if i % 3 else "support", prompt=f"{PROMPTS[i % len(PROMPTS)]} {i}",
                                     max_tokens=8, temperature=0) for i in range(64)])

    answers = asyncio.run(run())
    assert len(answers) == 64
    assert all(a.choices[0].finish_reason in ("length", "stop") and a.usage.completion_tokens >= 1 for a in answers)
    after = http.get("/metrics").text

    def steps(le):  # decode steps since `before` that carried at most `le` sequences
        return (metric(after, "llmops_serve_batch_size_bucket", le=le, model_name=SERVED)
                - metric(before, "llmops_serve_batch_size_bucket", le=le, model_name=SERVED))

    total = steps("+Inf")
    assert total > 0
    assert steps("1.0") < total  # some steps decoded several sequences at once
    assert steps("16.0") == total  # and never more than maxBatchSize
    # One sequence at a time, every token after each request's first would take its own step.
    one_by_one = sum(a.usage.completion_tokens - 1 for a in answers)
    assert total < one_by_one / 2
