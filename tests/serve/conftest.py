"""Fixtures of the serving runner tests (helpers in serve_support): the tiny Llama and its adapters,
one server process for the session, clients, and the reference answers.

The model is the fine-tuning tests' tiny Llama (random weights, written by this venv's transformers
5.x, as the fine-tuning runner writes models), and LoRA adapters made here with peft: random,
non-zero B matrices, large enough that an adapter measurably changes the greedy answer.
"""
from __future__ import annotations

import json

import pytest

from .serve_support import (CHAT, MAX_TOKENS, PROMPTS, REFERENCE, ServerProcess, in_serve_venv, make_adapter,
                            server_config, sharpen_attention)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """The tiny Llama, three adapters of it (support, billing: served; bad-shape: made for another model)."""
    import torch

    from tests.helpers.tiny_data import corpus_texts
    from tests.helpers.tiny_models import make_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("serve-models")
        model = sharpen_attention(make_tiny_model(root / "model", corpus_texts()))
        other = make_tiny_model(root / "model-32", corpus_texts(), hidden=32)
        return {
            "model": model,
            "support": make_adapter(model, root / "support", seed=1),
            "billing": make_adapter(model, root / "billing", seed=2),
            "bad-shape": make_adapter(other, root / "bad-shape", seed=3, targets=("q_proj",)),
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def server(tiny, tmp_path_factory):
    """The server on the tiny Llama with the `support` adapter from its config; `billing` is loaded at runtime."""
    config = server_config(tiny["model"], adapters=[{"name": "support", "path": str(tiny["support"])}], maxBatchSize=16)
    process = ServerProcess(config, tmp_path_factory.mktemp("server")).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def reference(tiny) -> dict:
    spec = {"model": str(tiny["model"]), "prompts": PROMPTS, "chat": CHAT, "max_tokens": MAX_TOKENS,
            "adapters": {"support": str(tiny["support"]), "billing": str(tiny["billing"])}}
    return in_serve_venv(REFERENCE, json.dumps(spec))
