"""Prometheus alerting rules, from the targets a platform team sets (the seeds below).

Written twice by `llmops-crdgen`: `dashboards/alerts.yaml` with the seed targets (for a plain
Prometheus), and the chart's `files/alerts.yaml` with a placeholder for each target, which the
chart's PrometheusRule template replaces with `.Values.alerts.*`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Union

import yaml

Number = Union[float, int, str]  # a string: a Helm placeholder


@dataclass(frozen=True)
class Targets:
    ttft_p95_seconds: Number = 0.5  # time to first token, p95
    gpu_memory_fraction: Number = 0.8  # of a GPU's memory in use, for 10 minutes
    error_rate: Number = 0.001  # 5xx responses over all API responses
    tokens_per_second_per_gpu: Number = 500  # generated tokens/s per GPU while requests run


SEEDS = Targets()
# The chart's values under `alerts:`, by target: the placeholders the template replaces.
HELM_VALUES = {"ttft_p95_seconds": "ttftP95Seconds", "gpu_memory_fraction": "gpuMemoryFraction",
               "error_rate": "errorRate", "tokens_per_second_per_gpu": "tokensPerSecondPerGpu"}
PLACEHOLDERS = Targets(**{f.name: f"__LLMOPS_{f.name.upper()}__" for f in fields(Targets)})

API = 'handler=~"/v1/.*"'  # the OpenAI routes: /health and /metrics are not the service's traffic


def _alert(name: str, expr: str, summary: str, description: str, severity: str = "warning", for_: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def rules(t: Targets) -> dict[str, Any]:
    serving = [
        _alert("LlmopsTimeToFirstTokenHigh",
               "histogram_quantile(0.95, sum by (namespace, inferenceservice, model_name, le) "
               f"(rate(vllm:time_to_first_token_seconds_bucket[5m]))) > {t.ttft_p95_seconds}",
               "TTFT p95 of {{ $labels.model_name }} ({{ $labels.namespace }}/{{ $labels.inferenceservice }}) is {{ $value | humanizeDuration }}",
               f"Above the {t.ttft_p95_seconds}s target for 5 minutes: requests queue (see running/waiting) or prompts grew; "
               "add replicas or lower max-num-seqs.", for_="5m"),
        _alert("LlmopsServingErrorRateHigh",
               f'sum by (namespace, inferenceservice) (rate(http_requests_total{{{API},status="5xx"}}[5m])) '
               f"/ sum by (namespace, inferenceservice) (rate(http_requests_total{{{API}}}[5m])) > {t.error_rate}",
               "{{ $labels.namespace }}/{{ $labels.inferenceservice }} answers {{ $value | humanizePercentage }} of requests with 5xx",
               f"Above the {t.error_rate} target for 5 minutes; the server's log says why.", for_="5m"),
        _alert("LlmopsGenerationThroughputLow",
               "sum by (namespace, inferenceservice, pod) (rate(vllm:generation_tokens_total[10m])) "
               "/ on (namespace, pod) group_left count by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL) "
               f"< {t.tokens_per_second_per_gpu} "
               "and on (namespace, pod) sum by (namespace, pod) (vllm:num_requests_running) > 0",
               "{{ $labels.pod }} generates {{ $value | humanize }} tokens/s per GPU while serving",
               f"Below the floor of {t.tokens_per_second_per_gpu} tokens/s per GPU for 15 minutes with requests running: "
               "check batching (running vs waiting), preemptions and KV-cache usage.", for_="15m"),
        _alert("LlmopsInferenceServiceNotReady",
               'max by (namespace, name) (llmops_object_phase{kind="InferenceService", phase!="Ready"}) > 0',
               "InferenceService {{ $labels.namespace }}/{{ $labels.name }} has not been Ready for 10 minutes",
               "kubectl describe inferenceservice shows its conditions and events (model not resolved, pods not starting, adapters failing).",
               for_="10m"),
    ]
    gpus = [
        _alert("LlmopsGPUMemoryHigh",
               # DCGM where its exporter maps GPUs to pods; the training runner's own NVML figures elsewhere.
               "max by (namespace, pod, gpu) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)) "
               f"> {t.gpu_memory_fraction} "
               "or (max by (namespace, pod, gpu) (llmops_finetune_gpu_memory_used_bytes / llmops_finetune_gpu_memory_total_bytes) "
               f"> {t.gpu_memory_fraction} unless on (namespace, pod) DCGM_FI_DEV_FB_USED)",
               "GPU {{ $labels.gpu }} of {{ $labels.namespace }}/{{ $labels.pod }} is at {{ $value | humanizePercentage }} of its memory",
               f"Above the {t.gpu_memory_fraction} target for 10 minutes: little headroom before out-of-memory "
               "(training: gradient checkpointing, a smaller batch, ZeRO-3; serving: a lower gpuMemoryUtilization).",
               for_="10m"),
    ]
    jobs = [
        _alert("LlmopsJobFailed",
               'max by (namespace, kind, name, reason) (llmops_object_failed{kind=~"FineTuneJob|CompressionJob", reason!="QualityGateFailed"}) > 0',
               "{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.name }} failed: {{ $labels.reason }}",
               "Its Failed condition says why; kubectl describe shows the events."),
        _alert("LlmopsQualityGateFailed",
               'max by (namespace, kind, name) (llmops_object_failed{reason="QualityGateFailed"}) > 0',
               "{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.name }} failed its quality gate",
               "The compressed model lost more quality than spec.evaluation.maxAccuracyDrop allows; nothing will serve it. "
               "status.qualityGate has both figures."),
        _alert("LlmopsTrainingStalled",
               # The last clause: training began 30 minutes ago (a first step may take longer than `for`).
               "changes(llmops_finetune_step[30m]) == 0 and llmops_finetune_step < llmops_finetune_total_steps "
               "and llmops_finetune_total_steps offset 30m > 0",
               "Training {{ $labels.job_name }} made no step in 30 minutes",
               "A hung rendezvous or data loader: check the pods of {{ $labels.job_name }}.", for_="10m"),
    ]
    operator = [
        _alert("LlmopsReconcileErrors", "sum by (kind) (rate(llmops_reconcile_errors_total[10m])) > 0",
               "llmops keeps failing to reconcile {{ $labels.kind }}",
               "Reconcile errors for 15 minutes; see the operator's log and the objects' events.", for_="15m"),
        _alert("LlmopsOperatorAbsent", "absent(llmops_reconcile_total)", "No llmops operator is reporting metrics",
               "FineTuneJobs, CompressionJobs and InferenceServices are not being reconciled.", severity="critical", for_="15m"),
    ]
    return {"groups": [{"name": "llmops-serving", "rules": serving}, {"name": "llmops-gpu", "rules": gpus},
                       {"name": "llmops-jobs", "rules": jobs}, {"name": "llmops-operator", "rules": operator}]}


def render(t: Targets) -> str:
    head = "# Generated by `llmops-crdgen` from operator/llmops/observability/alerts.py. Do not edit by hand.\n"
    if t == SEEDS:
        head += "# Targets: " + ", ".join(f"{k} {v}" for k, v in asdict(t).items()) + "\n"
    return head + yaml.safe_dump(rules(t), sort_keys=False, width=200)
