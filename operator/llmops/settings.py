"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

PREFIX = "llmops.dev"
FINALIZER = f"{PREFIX}/finalizer"
MANAGED_BY = "llmops-operator"

# Labels every child carries.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KIND = f"{PREFIX}/kind"
LABEL_NAME = f"{PREFIX}/name"
LABEL_ATTEMPT = f"{PREFIX}/attempt"
LABEL_ROLE = f"{PREFIX}/role"

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"


@dataclass(frozen=True)
class Settings:
    # Runner image per kind; a spec's `image` overrides it for one object.
    finetune_image: str = "ghcr.io/llmops-dev/runner-finetune:0.1.0"
    compress_image: str = "ghcr.io/llmops-dev/runner-compress:0.1.0"
    # ONNX Runtime INT8 needs optimum-onnx, whose transformers pin llm-compressor refuses: its own image.
    compress_onnx_image: str = "ghcr.io/llmops-dev/runner-compress-onnx:0.1.0"
    serve_image: str = "ghcr.io/llmops-dev/runner-serve:0.1.0"  # the CPU engine (engine: transformers)
    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    # KEDA's Prometheus scaler asks this server for the engine's series (autoscaling with KEDA).
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    adapter_call_timeout: float = 30.0  # seconds for one runtime load/unload of an adapter on a replica
    metrics_port: int = 8000  # the operator's own /metrics
    runner_metrics_port: int = 9400  # the runners' /metrics
    master_port: int = 29500  # torch.distributed rendezvous
    progress_interval: float = 15.0  # seconds between progress scrapes of a running job
    scrape_timeout: float = 2.0
    pvc_mount_root: str = "/mnt/pvc"
    workers: int = 32  # reconcile worker threads: API-latency bound (bench/operator_scale.py: 32 beat 16 at 500 jobs)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        base = cls()
        return cls(
            finetune_image=env.get("LLMOPS_FINETUNE_IMAGE", base.finetune_image),
            compress_image=env.get("LLMOPS_COMPRESS_IMAGE", base.compress_image),
            compress_onnx_image=env.get("LLMOPS_COMPRESS_ONNX_IMAGE", base.compress_onnx_image),
            serve_image=env.get("LLMOPS_SERVE_IMAGE", base.serve_image),
            vllm_image=env.get("LLMOPS_VLLM_IMAGE", base.vllm_image),
            prometheus_url=env.get("LLMOPS_PROMETHEUS_URL", base.prometheus_url),
            metrics_port=int(env.get("LLMOPS_METRICS_PORT", base.metrics_port)),
            runner_metrics_port=int(env.get("LLMOPS_RUNNER_METRICS_PORT", base.runner_metrics_port)),
            progress_interval=float(env.get("LLMOPS_PROGRESS_INTERVAL", base.progress_interval)),
            scrape_timeout=float(env.get("LLMOPS_SCRAPE_TIMEOUT", base.scrape_timeout)),
            workers=int(env.get("LLMOPS_WORKERS", base.workers)),
        )
