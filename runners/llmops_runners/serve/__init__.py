"""The CPU serving engine: `python -m llmops_runners.serve --config /etc/llmops/serve.json`.

An OpenAI-compatible HTTP server (FastAPI + uvicorn) on transformers + peft, or on Optimum's ONNX
Runtime classes for the compress-onnx family's ONNX artifacts, that looks like vLLM's OpenAI server
to clients and to Prometheus: the same routes, request and response shapes, runtime LoRA API and
metric names. What the operator runs for an InferenceService with `engine: transformers`.

    config.py      the JSON contract (docs/runner-contract.md, "Serving runner contract")
    loading.py     the model folder (safetensors or ONNX) into a backend, tokenizer and limits
    backends.py    one forward step of the batch for torch (+ peft LoRA rows) and ONNX Runtime
    kv_cache.py    the left-padded batch's KV cache: rows join and leave between steps
    engine.py      the scheduler and decode loop, on one worker thread (continuous batching)
    sampling.py    greedy / temperature / top-p choice of each row's next token
    detokenize.py  incremental text of each sequence, and stop strings
    prompts.py     request -> token ids (chat template, limits)
    protocol.py    the OpenAI request bodies (pydantic)
    responses.py   the OpenAI / vLLM response bodies and stream chunks
    errors.py      OpenAI-style error bodies
    metrics.py     vLLM's metric names (prometheus_client)
    server.py      the state behind the routes: loading, adapters, engine
    app.py         the FastAPI routes
"""
