"""An ONNX artifact as the compression runner writes it (compress-onnx's onnx-dynamic-int8 stage:
model.onnx, its config and the input's tokenizer), served through Optimum's ONNX Runtime class."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys

import openai
import pytest

from .serve_support import CHAT, MAX_TOKENS, PROMPTS, REFERENCE, REPO, SERVED, ServerProcess, in_serve_venv, server_config


STREAMED = 64


def run_compress(*args, **kwargs):
    """tests/compress's runner fixture (its conftest is not importable by name from here: ours is `conftest` too)."""
    module = sys.modules.get("compress_conftest")
    if module is None:
        spec = importlib.util.spec_from_file_location("compress_conftest", REPO / "tests" / "compress" / "conftest.py")
        module = sys.modules["compress_conftest"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
    return module.run_compress(*args, **kwargs)


@pytest.fixture(scope="module")
def int8(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    run = run_compress({"model": {"path": str(tiny["model"])}, "stages": [{"quantize": {"method": "onnx-dynamic-int8"}}],
                        "output": {"path": str(root / "int8")}}, root / "work", family="compress-onnx")
    assert run.exit_code == 0, run.stderr[-3000:]
    assert (run.output / "model.onnx").is_file()
    return run.output


def test_the_onnx_int8_model_is_served_and_answers_as_optimum_does(int8, tiny, tmp_path):
    want = in_serve_venv(REFERENCE, json.dumps({"model": str(int8), "onnx": str(int8), "prompts": PROMPTS, "chat": CHAT,
                                                "max_tokens": MAX_TOKENS}))["onnx"]
    server = ServerProcess(server_config(int8), tmp_path).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
            card = client.models.list().data[0].model_dump()
            assert card["id"] == SERVED and card["root"] == str(int8)
            for prompt in PROMPTS:  # one at a time: a batch of one, as Optimum's generate runs it
                got = client.completions.create(model=SERVED, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
                assert got.choices[0].text == want["prompt:" + prompt]["text"], prompt
            chat = client.chat.completions.create(model=SERVED, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0)
            assert chat.choices[0].message.content == want["chat"]["text"]
            # Long enough that the stream has several events even when the client falls behind the engine (the
            # deltas waiting for it are then sent as one): ONNX Runtime decodes the tiny model in a fraction of a ms.
            whole = client.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=STREAMED, temperature=0).choices[0].text
            chunks = [c.choices[0].text for c in client.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=STREAMED,
                                                                           temperature=0, stream=True)]
            assert len([c for c in chunks if c]) >= 3 and "".join(chunks) == whole
            assert whole.startswith(want["prompt:" + PROMPTS[0]]["text"])

            import httpx

            refused = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "support", "lora_path": str(tiny["support"])})
            assert refused.status_code == 400 and "ONNX" in refused.json()["error"]["message"]

        async def concurrent():
            async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
                return await asyncio.gather(*[c.completions.create(model=SERVED, prompt=f"{p} {i}", max_tokens=6, temperature=0)
                                              for i, p in enumerate(PROMPTS * 3)])

        # Batched, ONNX Runtime's dynamic INT8 quantizes activations with one scale per batch: answers may
        # differ from a batch of one in the last bits, so only completeness is checked here.
        answers = asyncio.run(concurrent())
        assert all(a.choices[0].finish_reason in ("length", "stop") for a in answers)
        # SIGTERM: running requests finish, the app shuts down, then the process ends by the signal (143), as uvicorn does.
        assert server.stop() == -signal.SIGTERM
        assert "Application shutdown complete" in server.log
    finally:
        server.stop()
