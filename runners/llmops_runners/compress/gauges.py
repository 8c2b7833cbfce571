"""The compression runner's Prometheus endpoint: which stage runs, how far it is, what each gave."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger("llmops_runners.compress")

PREFIX = "llmops_compress_"


class CompressionGauges:
    def __init__(self, job: str, stages: int):
        self.registry = CollectorRegistry()
        self.job = job

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, ["job_name", *labels], registry=self.registry)

        self._stage = gauge("stage", "Index of the stage running now (0-based); equals stages_total when done.")
        self._stages = gauge("stages_total", "Stages in the chain.")
        self._step = gauge("stage_step", "Steps done in the running stage (training, calibration, ...).")
        self._steps = gauge("stage_total_steps", "Steps the running stage plans; 0 when it has no steps.")
        self._result = gauge("stage_result", "A figure a finished stage measured.", ("stage", "figure"))
        self._stages.labels(job).set(stages)
        self._stage.labels(job).set(0)

    def serve(self, port: int | None) -> None:
        if port:
            start_http_server(port, registry=self.registry)
            log.info("metrics endpoint on :%d/metrics", port)

    def start_stage(self, index: int) -> None:
        self._stage.labels(self.job).set(index)
        self._step.labels(self.job).set(0)
        self._steps.labels(self.job).set(0)

    def progress(self, step: int, total: int) -> None:
        self._step.labels(self.job).set(step)
        self._steps.labels(self.job).set(total)

    def finish_stage(self, name: str, figures: dict[str, float]) -> None:
        for figure, value in figures.items():
            self._result.labels(self.job, name, figure).set(value)
