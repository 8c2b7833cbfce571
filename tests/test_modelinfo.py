"""The pre-flight reads a hub model's config.json over HTTP (a local stand-in for the hub here)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmops import modelinfo
from llmops.controllers.finetune.plan import Observed, plan
from llmops.settings import Settings

LLAMA_70B = {  # the shape of Meta-Llama-3-70B's config.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.fixture
def hub(monkeypatch):
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            if self.path == "/meta-llama/Meta-Llama-3-70B/resolve/main/config.json":
                body = json.dumps(LLAMA_70B).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("LLMOPS_HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    modelinfo._cache.clear()
    yield requests
    server.shutdown()
    modelinfo._cache.clear()


def test_config_is_read_once_and_misses_are_cached(hub):
    assert modelinfo.fetch_config("hf://meta-llama/Meta-Llama-3-70B", None)["hidden_size"] == 8192
    assert modelinfo.fetch_config("hf://meta-llama/Meta-Llama-3-70B", None)["num_hidden_layers"] == 80
    assert modelinfo.fetch_config("hf://org/gated", "v1") is None
    assert modelinfo.fetch_config("hf://org/gated", "v1") is None
    assert modelinfo.fetch_config("pvc://models/x", None) is None  # not the operator's to read
    assert hub == ["/meta-llama/Meta-Llama-3-70B/resolve/main/config.json", "/org/gated/resolve/v1/config.json"]


def test_auto_uses_the_hub_config_when_the_spec_has_no_size(hub):
    body = {
        "apiVersion": "llmops.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "big", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"baseModel": {"uri": "hf://meta-llama/Meta-Llama-3-70B"}, "dataset": {"uri": "pvc://d/t.jsonl"},
                 "method": "auto", "resources": {"gpuType": "NVIDIA-H100-80GB-HBM3"}, "output": {"uri": "pvc://m/o"}},
    }
    config = modelinfo.fetch_config(body["spec"]["baseModel"]["uri"], None)
    result = plan(Observed(body, [], [], datetime.now(timezone.utc), {}, config), Settings())
    assert result.status["selectedMethod"] == "qlora"
    assert "full" in result.status["methodReason"] and "lora" in result.status["methodReason"]
