"""Every Prometheus series llmops exports, and the other exporters' series its dashboards read.

This is the one list: tests/observability/test_catalogue.py checks it against the metrics the
operator and the runners really declare, docs/metrics.md is generated from it, and every
dashboard panel and alert may read only series named here (or the exporters' ones below).
"""

from __future__ import annotations

from dataclasses import dataclass

OPERATOR, TRAINING, COMPRESSION, SERVING = "operator", "training runner", "compression runner", "serving runner"


@dataclass(frozen=True)
class Series:
    name: str  # as exposed: counters end in _total, histograms add _bucket/_sum/_count
    type: str  # counter, gauge, histogram or summary
    labels: tuple[str, ...]
    source: str
    help: str


def _s(name: str, type_: str, labels: str, source: str, help_: str) -> Series:
    return Series(name, type_, tuple(labels.split()), source, help_)


OURS: tuple[Series, ...] = (
    # The operator (its Deployment's metrics port).
    _s("llmops_reconcile_total", "counter", "kind result", OPERATOR, "Reconciles by kind and result (success, error); both start at 0."),
    _s("llmops_reconcile_duration_seconds", "histogram", "kind", OPERATOR, "Time spent in one reconcile."),
    _s("llmops_reconcile_errors_total", "counter", "kind error", OPERATOR, "Reconcile errors by kind and exception type."),
    _s("llmops_object_phase", "gauge", "namespace kind name phase", OPERATOR, "1 per object, labelled with its current phase."),
    _s("llmops_object_failed", "gauge", "namespace kind name reason", OPERATOR,
       "1 while an object is Failed, with the reason its condition gives (QualityGateFailed, BackoffLimitExceeded, ...)."),
    _s("llmops_status_figure", "gauge", "namespace kind name stage figure", OPERATOR,
       "Numbers a status reports: final losses, each compression stage's size/quality/latency before and after, "
       "qualityGatePassed (1/0), replicas and readyReplicas. Kept after the workload's pod is gone."),
    _s("llmops_gpus_requested", "gauge", "kind", OPERATOR, "GPUs requested by objects not yet finished."),
    _s("llmops_workqueue_depth", "gauge", "", OPERATOR, "Object keys waiting for a reconcile worker."),
    _s("llmops_children_created_total", "counter", "kind child", OPERATOR, "Child resources created."),
    _s("llmops_api_writes_total", "counter", "method resource", OPERATOR, "Writes to the API server by HTTP method and resource."),
    # The fine-tuning runner (every training pod's metrics port).
    *(_s(f"llmops_finetune_{name}", "gauge", "job_name", TRAINING, help_) for name, help_ in (
        ("step", "Optimizer steps completed."),
        ("total_steps", "Optimizer steps planned for the run."),
        ("epoch", "Fractional epoch reached."),
        ("loss", "Training loss averaged over the last logging interval."),
        ("eval_loss", "Latest validation loss."),
        ("learning_rate", "Current learning rate."),
        ("tokens_per_second", "Non-padding input tokens per second since the run began."),
        ("samples_per_second", "Training samples per second since the run began."),
        ("process_rss_bytes", "Resident memory of the training process."),
    )),
    *(_s(f"llmops_finetune_{name}", "gauge", "job_name gpu", TRAINING, help_) for name, help_ in (
        ("cuda_memory_allocated_bytes", "torch CUDA memory allocated, per GPU."),
        ("cuda_memory_reserved_bytes", "torch CUDA memory reserved, per GPU."),
        ("cuda_memory_peak_bytes", "torch CUDA peak memory allocated, per GPU."),
        ("gpu_memory_used_bytes", "GPU memory in use per NVML (all processes), per GPU."),
        ("gpu_memory_total_bytes", "GPU memory size per NVML, per GPU."),
    )),
    # The compression runner.
    _s("llmops_compress_stage", "gauge", "job_name", COMPRESSION, "Index of the running stage (0-based); equals stages_total when done."),
    _s("llmops_compress_stages_total", "gauge", "job_name", COMPRESSION, "Stages in the chain."),
    _s("llmops_compress_stage_step", "gauge", "job_name", COMPRESSION, "Steps done in the running stage."),
    _s("llmops_compress_stage_total_steps", "gauge", "job_name", COMPRESSION, "Steps the running stage plans (0: none)."),
    _s("llmops_compress_stage_result", "gauge", "job_name stage figure", COMPRESSION, "A figure a finished stage measured."),
    # The CPU serving runner: vLLM's names and meanings, so one dashboard reads both servers.
    _s("vllm:time_to_first_token_seconds", "histogram", "model_name", SERVING, "Time to first token."),
    _s("vllm:inter_token_latency_seconds", "histogram", "model_name", SERVING, "Time between two tokens of a sequence."),
    _s("vllm:time_per_output_token_seconds", "histogram", "model_name", SERVING, "The same, under vLLM's older name."),
    _s("vllm:e2e_request_latency_seconds", "histogram", "model_name", SERVING, "Arrival to last token."),
    _s("vllm:request_queue_time_seconds", "histogram", "model_name", SERVING, "Arrival to the start of prefill."),
    _s("vllm:iteration_tokens_total", "histogram", "model_name", SERVING, "Tokens processed per engine step."),
    _s("vllm:prompt_tokens_total", "counter", "model_name", SERVING, "Prompt tokens prefilled."),
    _s("vllm:generation_tokens_total", "counter", "model_name", SERVING, "Tokens generated."),
    _s("vllm:request_success_total", "counter", "model_name finished_reason", SERVING, "Finished requests by stop, length, abort."),
    _s("vllm:num_requests_running", "gauge", "model_name", SERVING, "Sequences in the batch."),
    _s("vllm:num_requests_waiting", "gauge", "model_name", SERVING, "Requests waiting for a slot."),
    _s("llmops_serve_batch_size", "histogram", "model_name", SERVING, "Sequences decoded together per step (ours: vLLM has none)."),
    # vLLM's HTTP series, from the library vLLM uses (prometheus-fastapi-instrumentator).
    _s("http_requests_total", "counter", "handler method status", SERVING, "Requests by route, method and status class (2xx, 4xx, 5xx)."),
    _s("http_request_duration_seconds", "histogram", "handler method", SERVING, "Request duration by route."),
    _s("http_request_duration_highr_seconds", "histogram", "", SERVING, "Request duration, fine buckets, all routes."),
    _s("http_request_size_bytes", "summary", "handler", SERVING, "Request body sizes."),
    _s("http_response_size_bytes", "summary", "handler", SERVING, "Response body sizes."),
)

# Every label our series carry, and why it cannot grow without bound.
LABELS: dict[str, str] = {
    "kind": "one of the three kinds (FineTuneJob, CompressionJob, InferenceService)",
    "namespace": "namespaces that hold our objects",
    "name": "object names: a series goes when its object is deleted",
    "phase": "the kind's phases (at most six)",
    "reason": "condition reasons: a fixed vocabulary per kind",
    "stage": "the chain's stages, `<index>-<name>` (a handful per CompressionJob)",
    "figure": "the figure names the runners report (tens)",
    "result": "success or error",
    "error": "exception class names raised by a reconcile",
    "child": "child kinds (Job, Service, Deployment, ...)",
    "method": "HTTP methods",
    "resource": "API resources the operator writes",
    "job_name": "the FineTuneJob or CompressionJob the runner runs for (one per pod)",
    "gpu": "GPU index in the pod",
    "model_name": "the served model name (adapters are counted under their base, as vLLM does)",
    "finished_reason": "stop, length or abort",
    "handler": "the server's routes (unmatched paths grouped as `none`)",
    "status": "status classes: 2xx, 3xx, 4xx, 5xx",
}

# Labels Prometheus adds when it scrapes a pod (the chart's PodMonitor relabels the pod's
# llmops.dev/kind and llmops.dev/name labels into one label named after the kind).
TARGET_LABELS: dict[str, str] = {
    "namespace": "the pod's namespace",
    "pod": "the pod's name",
    "finetunejob": "the FineTuneJob a training pod runs for",
    "compressionjob": "the CompressionJob a compression pod runs for",
    "inferenceservice": "the InferenceService a server pod belongs to",
}

# Other exporters' series the dashboards and alerts read by name. Where vLLM renamed a series,
# both names are listed and panels read `new or old`.
VLLM: dict[str, str] = {
    "vllm:time_to_first_token_seconds_bucket": "TTFT histogram",
    "vllm:inter_token_latency_seconds_bucket": "inter-token latency (vLLM >= 0.10)",
    "vllm:time_per_output_token_seconds_bucket": "inter-token latency (older vLLM)",
    "vllm:e2e_request_latency_seconds_bucket": "end-to-end request latency",
    "vllm:request_queue_time_seconds_bucket": "time waiting before prefill",
    "vllm:prompt_tokens_total": "prompt tokens",
    "vllm:generation_tokens_total": "generated tokens",
    "vllm:request_success_total": "finished requests",
    "vllm:num_requests_running": "requests in the batch",
    "vllm:num_requests_waiting": "requests queued",
    "vllm:kv_cache_usage_perc": "KV-cache usage, 0-1 (vLLM >= 0.10)",
    "vllm:gpu_cache_usage_perc": "KV-cache usage, 0-1 (older vLLM)",
    "vllm:num_preemptions_total": "preempted requests",
    "http_requests_total": "requests by status class",
}
DCGM: dict[str, str] = {
    "DCGM_FI_DEV_FB_USED": "framebuffer memory used, MiB",
    "DCGM_FI_DEV_FB_FREE": "framebuffer memory free, MiB",
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilisation, %",
}
KUBERNETES: dict[str, str] = {"up": "Prometheus's own per-target series, carrying the pod's target labels"}


def our_names() -> set[str]:
    """Every sample name our series expose (histograms and summaries as their parts)."""
    names: set[str] = set()
    for series in OURS:
        if series.type in ("histogram", "summary"):
            names |= {f"{series.name}_sum", f"{series.name}_count"} | ({f"{series.name}_bucket"} if series.type == "histogram" else set())
        else:
            names.add(series.name)
    return names


def readable_names() -> set[str]:
    """What a dashboard or alert may read."""
    return our_names() | set(VLLM) | set(DCGM) | set(KUBERNETES)


def markdown() -> str:
    """docs/metrics.md."""
    lines = ["<!-- Generated by `llmops-crdgen` from operator/llmops/observability/catalogue.py. Do not edit by hand. -->",
             "# Metrics", "",
             "Every series llmops exports. The dashboards and alerts under `dashboards/` read only these and the",
             "exporters' series listed after them; a test checks this list against the code.", ""]
    for source in (OPERATOR, TRAINING, COMPRESSION, SERVING):
        lines += [f"## {source[0].upper()}{source[1:]}", "", "| series | type | labels | meaning |", "|---|---|---|---|"]
        lines += [f"| `{s.name}` | {s.type} | {', '.join(f'`{label}`' for label in s.labels)} | {s.help} |"
                  for s in OURS if s.source == source]
        lines.append("")
    lines += ["## Labels, and why each is bounded", "", "| label | values |", "|---|---|"]
    lines += [f"| `{label}` | {why} |" for label, why in LABELS.items()]
    lines += ["", "Added at scrape time (the chart's PodMonitor):", "", "| label | value |", "|---|---|"]
    lines += [f"| `{label}` | {why} |" for label, why in TARGET_LABELS.items()]
    for title, table in (("vLLM", VLLM), ("NVIDIA DCGM exporter", DCGM), ("Prometheus", KUBERNETES)):
        lines += ["", f"## Read from {title}", "", "| series | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {meaning} |" for name, meaning in table.items()]
    return "\n".join(lines) + "\n"


# Series only a GPU run produces (torch's CUDA allocator, NVML): empty on CPU-only clusters.
GPU_ONLY = frozenset(s.name for s in OURS if s.source == TRAINING and "gpu" in s.labels)
