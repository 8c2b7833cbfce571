"""Prometheus metrics under vLLM's names and meanings, so vLLM's dashboards, alerts and the
operator's autoscaling read this server unchanged (the mapping is in docs/runner-contract.md).

All are labelled `model_name` (the served model name, as vLLM labels them; adapters are counted
under their base). `llmops_serve_batch_size` records how many sequences each decode step carried
(what shows that concurrent requests are batched). Errors are counted where vLLM counts them: the
HTTP series of prometheus-fastapi-instrumentator (app.py), in this same registry.
"""
from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's buckets (vllm/v1/metrics/loggers.py), so its dashboards' quantiles mean the same here.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISH_REASONS = ("stop", "length", "abort")


class ServeMetrics:
    """One registry per server, so tests can build several in one process."""

    def __init__(self, model_name: str):
        # vLLM serves no `_created` series; without this every counter and histogram would add one.
        prometheus_client.disable_created_metrics()
        self.registry = r = CollectorRegistry()
        labels = ["model_name"]
        self.model_name = model_name

        def one(metric):
            return metric.labels(model_name=model_name)

        self.time_to_first_token = one(Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                                 labels, buckets=TTFT_BUCKETS, registry=r))
        self.inter_token_latency = one(Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                                                 labels, buckets=ITL_BUCKETS, registry=r))
        self.time_per_output_token = one(Histogram("vllm:time_per_output_token_seconds",
                                                   "Histogram of time per output token in seconds (vLLM's older name of the inter-token latency).",
                                                   labels, buckets=ITL_BUCKETS, registry=r))
        self.e2e_request_latency = one(Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                                                 labels, buckets=REQUEST_BUCKETS, registry=r))
        self.request_queue_time = one(Histogram("vllm:request_queue_time_seconds",
                                                "Histogram of time spent in WAITING phase for request.",
                                                labels, buckets=REQUEST_BUCKETS, registry=r))
        self.iteration_tokens = one(Histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                              labels, buckets=TOKEN_BUCKETS, registry=r))
        self.prompt_tokens = one(Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r))
        self.generation_tokens = one(Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=r))
        success = Counter("vllm:request_success", "Count of successfully processed requests.", labels + ["finished_reason"], registry=r)
        self.request_success = {reason: success.labels(model_name=model_name, finished_reason=reason) for reason in FINISH_REASONS}
        self.num_requests_running = one(Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                                              labels, registry=r))
        self.num_requests_waiting = one(Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                              labels, registry=r))
        self.batch_size = one(Histogram("llmops_serve_batch_size", "Sequences decoded together in one forward step.",
                                        labels, buckets=BATCH_BUCKETS, registry=r))

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
