"""CPU benchmark of the serving runner: throughput and latency at 1, 8 and 32 concurrent clients.

Starts `python -m llmops_runners.serve` in .venv-serve (the `serve` extra) on the tests' tiny
Llama (hidden 64, 2 layers, random weights: the engine's own cost, not a model's), then, per
concurrency level, keeps that many clients busy with streamed completions (greedy, a fixed number
of tokens) and measures requests/s, generated tokens/s, time to first token (the first streamed
text) and end-to-end latency, p50 and p95, on the client side. The clients are raw httpx (one
process, async) so that they take as little of the shared CPU as possible. Figures are printed,
never asserted; the last line is the 8-vs-1 throughput ratio (the target is >= 3x: batching).

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --concurrency 1 8 32 64 --max-tokens 64 --threads 2
    .venv/bin/python bench/serve.py --model /path/to/model   # any folder the server can serve
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PYTHON = REPO / ".venv-serve" / "bin" / "python"
PROMPTS = ["What colour is the apple?", "Name the colour of the river.", "The tiger is which colour?",
           "Tell me which colour the candle has.", "The lamp is which colour?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, workdir: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    config = workdir / "serve.json"
    config.write_text(json.dumps({"model": {"path": str(model)}, "servedModelName": "bench", "host": "127.0.0.1",
                                  "port": port, "maxBatchSize": max_batch}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([str(PYTHON), "-m", "llmops_runners.serve", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{(workdir / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become healthy in 300 s")


async def one_request(client, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first text, end-to-end seconds, generated tokens) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
    end = time.perf_counter() - start
    return (first if first is not None else end), end, tokens


async def level(url: str, clients: int, requests_each: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        results = []

        async def worker(index: int):
            for i in range(requests_each):
                results.append(await one_request(client, PROMPTS[(index + i) % len(PROMPTS)] + f" {index}.{i}", max_tokens))

        await asyncio.gather(*[one_request(client, PROMPTS[0], 4) for _ in range(min(clients, 4))])  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in range(clients)])
        wall = time.perf_counter() - start
    ttft, e2e, tokens = zip(*results)
    return {"clients": clients, "requests": len(results), "seconds": wall, "rps": len(results) / wall,
            "tokps": sum(tokens) / wall, "ttft": percentiles(ttft), "e2e": percentiles(e2e)}


def percentiles(values) -> tuple[float, float]:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0], ordered[0]
    cuts = statistics.quantiles(ordered, n=20, method="inclusive")
    return statistics.median(ordered), cuts[18]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 4 per client)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--model", type=Path, help="a model folder to serve instead of the tiny Llama")
    args = parser.parse_args(argv)
    if not PYTHON.exists():
        raise SystemExit(f"{PYTHON} is missing: scripts/setup.sh makes it (pip install -e '.[serve,runner-torch]')")

    with tempfile.TemporaryDirectory(prefix="llmops-bench-serve-") as tmp:
        workdir = Path(tmp)
        model = args.model
        if model is None:
            from tests.helpers.tiny_data import corpus_texts
            from tests.helpers.tiny_models import make_tiny_model

            model = make_tiny_model(workdir / "model", corpus_texts())
        proc, url = start_server(model, workdir, args.threads, args.max_batch_size)
        try:
            print(f"server: {model} on {url}, {args.threads} torch thread(s), maxBatchSize {args.max_batch_size}, "
                  f"{args.max_tokens} tokens per request, {os.cpu_count()} CPUs on this machine (shared with the clients)")
            print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'e2e p50':>8} {'e2e p95':>8}")
            rows = {}
            for clients in args.concurrency:
                each = max(4, args.requests // clients)
                row = rows[clients] = asyncio.run(level(url, clients, each, args.max_tokens))
                print(f"{clients:>7} {row['requests']:>8} {row['rps']:>7.2f} {row['tokps']:>8.1f} "
                      f"{row['ttft'][0] * 1000:>7.1f}ms {row['ttft'][1] * 1000:>7.1f}ms "
                      f"{row['e2e'][0] * 1000:>6.0f}ms {row['e2e'][1] * 1000:>6.0f}ms")
            if 1 in rows and 8 in rows:
                print(f"throughput 8 vs 1 concurrent: {rows[8]['tokps'] / rows[1]['tokps']:.2f}x tokens/s "
                      f"({rows[8]['rps'] / rows[1]['rps']:.2f}x requests/s)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
