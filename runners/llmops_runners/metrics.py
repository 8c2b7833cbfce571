"""Training metrics: a Prometheus endpoint and human-readable log lines, fed by one Trainer callback."""
from __future__ import annotations

import logging
import os
import time

import psutil
import torch
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from transformers import TrainerCallback

log = logging.getLogger("llmops_runners.progress")

PREFIX = "llmops_finetune_"


class TrainingGauges:
    """The series the endpoint serves; one registry per run so tests can run several in a process."""

    def __init__(self, job: str):
        self.registry = CollectorRegistry()
        labels = {"job_name": job}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            g = Gauge(PREFIX + name, doc, ["job_name", *extra], registry=self.registry)
            return g if extra else g.labels(**labels)

        self.job = job
        self.step = gauge("step", "Optimizer steps completed.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned for the run.")
        self.epoch = gauge("epoch", "Fractional epoch reached.")
        self.loss = gauge("loss", "Training loss averaged over the last logging interval.")
        self.eval_loss = gauge("eval_loss", "Latest validation loss.")
        self.learning_rate = gauge("learning_rate", "Current learning rate.")
        self.tokens_per_second = gauge("tokens_per_second", "Non-padding input tokens per second since the run began.")
        self.samples_per_second = gauge("samples_per_second", "Training samples per second since the run began.")
        self.rss = gauge("process_rss_bytes", "Resident memory of this training process.")
        self.cuda_allocated = gauge("cuda_memory_allocated_bytes", "torch CUDA memory allocated.", ("gpu",))
        self.cuda_reserved = gauge("cuda_memory_reserved_bytes", "torch CUDA memory reserved.", ("gpu",))
        self.cuda_peak = gauge("cuda_memory_peak_bytes", "torch CUDA peak memory allocated.", ("gpu",))
        self.nvml_used = gauge("gpu_memory_used_bytes", "GPU memory in use per NVML (all processes).", ("gpu",))
        self.nvml_total = gauge("gpu_memory_total_bytes", "GPU memory size per NVML.", ("gpu",))
        self._nvml = _nvml_handles()

    def serve(self, port: int | None) -> None:
        if port:
            start_http_server(port, registry=self.registry)
            log.info("metrics endpoint on :%d/metrics", port)

    def sample_memory(self) -> None:
        self.rss.set(psutil.Process(os.getpid()).memory_info().rss)
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                gpu = {"job_name": self.job, "gpu": str(i)}
                self.cuda_allocated.labels(**gpu).set(torch.cuda.memory_allocated(i))
                self.cuda_reserved.labels(**gpu).set(torch.cuda.memory_reserved(i))
                self.cuda_peak.labels(**gpu).set(torch.cuda.max_memory_allocated(i))
        for i, handle in enumerate(self._nvml):
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpu = {"job_name": self.job, "gpu": str(i)}
            self.nvml_used.labels(**gpu).set(info.used)
            self.nvml_total.labels(**gpu).set(info.total)


def _nvml_handles() -> list:
    if not torch.cuda.is_available():
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # NVML absent or not permitted in this container: the torch figures remain
        return []


class MetricsCallback(TrainerCallback):
    """Updates the gauges each step and writes one readable log line per logging interval."""

    def __init__(self, gauges: TrainingGauges, samples_per_step: int):
        self.gauges = gauges
        self.samples_per_step = samples_per_step
        self._start_time = None
        self._start_step = 0
        self._start_tokens = 0
        self.throughput: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_time = time.perf_counter()
        self._start_step = state.global_step
        self._start_tokens = state.num_input_tokens_seen or 0
        self.gauges.total_steps.set(state.max_steps)
        self.gauges.step.set(state.global_step)
        self.gauges.sample_memory()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        g = self.gauges
        g.step.set(state.global_step)
        g.epoch.set(state.epoch or 0.0)
        tokens = (state.num_input_tokens_seen or 0) - self._start_tokens
        samples = (state.global_step - self._start_step) * self.samples_per_step
        self.throughput = {"tokensPerSecond": tokens / elapsed, "samplesPerSecond": samples / elapsed}
        g.tokens_per_second.set(self.throughput["tokensPerSecond"])
        g.samples_per_second.set(self.throughput["samplesPerSecond"])
        g.sample_memory()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        g = self.gauges
        if "loss" in logs:
            g.loss.set(logs["loss"])
        if "learning_rate" in logs:
            g.learning_rate.set(logs["learning_rate"])
        if "eval_loss" in logs:
            g.eval_loss.set(logs["eval_loss"])
        if state.is_world_process_zero:
            parts = [f"step {state.global_step}/{state.max_steps}", f"epoch {state.epoch or 0:.2f}"]
            for key in ("loss", "eval_loss", "learning_rate", "train_loss"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            if self.throughput:
                parts.append(f"{self.throughput['tokensPerSecond']:.0f} tok/s")
            log.info(" | ".join(parts))
