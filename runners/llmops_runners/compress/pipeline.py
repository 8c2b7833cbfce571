"""Run a chain of stages, measure every model it makes, and apply the quality gate.

Every stage writes into its own folder under `<output>/.stages/`; the last stage's model then
becomes the output folder's content, beside `compression.json` (what each stage did and the
gate's verdict). A model that fails the gate is kept, marked `"passed": false`, so a person can
look at it; the operator never lets it be served.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic.alias_generators import to_camel

from ..errors import BadInputError
from . import evaluate, models
from .config import CompressConfig
from .gauges import CompressionGauges
from .stages import StageContext, check_chain, implementation

log = logging.getLogger("llmops_runners.compress")

MANIFEST = "compression.json"
WORK = ".stages"
AGREEMENT_PROMPTS = 32
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog while the river runs past the old stone bridge."


@dataclass
class Measurement:
    """What one model on disk is: the figures every stage reports before and after."""

    size_bytes: int
    parameters: int | None
    sparsity: float | None
    latency_ms: float
    quality: evaluate.Quality | None = None
    replies: list[str] | None = None  # greedy replies to the evaluation prompts (causal LMs)

    def figures(self, suffix: str) -> dict[str, float]:
        out = {f"sizeBytes{suffix}": float(self.size_bytes), f"latencyMs{suffix}": round(self.latency_ms, 3)}
        if self.parameters is not None:
            out[f"parameters{suffix}"] = float(self.parameters)
        if self.sparsity is not None:
            out[f"sparsity{suffix}"] = round(self.sparsity, 4)
        if self.quality is not None:
            out[f"quality{suffix}"] = round(self.quality.value, 6)
        return out


@dataclass
class Summary:
    output: Path
    stages: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict | None = None

    @property
    def passed(self) -> bool:
        return self.gate is None or bool(self.gate["passed"])


def measure(ref: models.ModelRef, config: CompressConfig) -> Measurement:
    model, tokenizer = models.load(ref)
    torch_model = hasattr(model, "parameters") and callable(model.parameters)
    found = Measurement(
        size_bytes=models.size_on_disk(ref.path),
        parameters=models.count_parameters(model) if torch_model else None,
        sparsity=models.weight_sparsity(model) if torch_model else None,
        latency_ms=evaluate.latency_seconds(model, tokenizer, LATENCY_TEXT) * 1000,
    )
    ev = config.evaluation
    if ev:
        found.quality = evaluate.quality(model, tokenizer, ref.task, ev.path, ev.metric, config.max_seq_length, ev.samples)
        if ref.task == "causal-lm":
            from . import examples

            prompts = [p.text for p in examples.prompts(tokenizer, ev.path, AGREEMENT_PROMPTS)]
            found.replies = evaluate.generate(model, tokenizer, prompts)
    return found


def run(config: CompressConfig, gauges: CompressionGauges | None = None) -> Summary:
    source = models.open_input(models.fetch(config.model.path, config.model.revision, config.model.token_env), config.model.base_path)
    check_chain(config, source)
    if config.evaluation:
        evaluate.check_metric(config.evaluation.metric, source.task)
    output = Path(config.output.path)
    inside, given = output.resolve(), source.path.resolve()
    if inside == given or inside in given.parents or given in inside.parents:
        raise BadInputError(f"The output {output} would overwrite the input model {source.path}; choose another output location.")
    _empty(output)
    work = output / WORK
    gauges = gauges or CompressionGauges(config.job_name, len(config.stages))
    summary = Summary(output)
    started = time.monotonic()

    current = source
    before = None if source.format == "peft-adapter" else measure(source, config)
    reference = before  # the gate compares the chain's first whole model with its last
    for index, stage in enumerate(config.stages):
        gauges.start_stage(index)
        log.info("stage %d/%d: %s", index + 1, len(config.stages), stage.name)
        ctx = StageContext(config, index, stage.name, work / f"{index}-{stage.name}", gauges.progress)
        stage_started = time.monotonic()
        outcome = implementation(stage)(stage.settings, current, ctx)
        after = measure(outcome.model, config)
        figures = {**(before.figures("Before") if before else {}), **after.figures("After"),
                   **outcome.metrics, "durationSeconds": round(time.monotonic() - stage_started, 3)}
        summary.stages.append({"name": stage.name, "type": to_camel(stage.type), "phase": "Succeeded", "metrics": figures})
        gauges.finish_stage(stage.name, figures)
        log.info("stage %s: %s", stage.name, json.dumps(figures))
        current, before = outcome.model, after
        reference = reference or after
    gauges.start_stage(len(config.stages))

    summary.metrics = _totals(reference, before, time.monotonic() - started)
    if config.evaluation:
        summary.gate = _gate(config, reference, before)
        summary.metrics.update(qualityDrop=round(summary.gate["drop"], 6))
        if summary.gate.get("greedyAgreement") is not None:
            summary.metrics["greedyAgreement"] = summary.gate["greedyAgreement"]
    _publish(current.path, output, work)
    (output / MANIFEST).write_text(json.dumps({
        "jobName": config.job_name, "input": str(source.path), "task": source.task, "format": current.format,
        "stages": summary.stages, "metrics": summary.metrics, "qualityGate": summary.gate,
    }, indent=2))
    return summary


def _totals(first: Measurement, last: Measurement, seconds: float) -> dict[str, float]:
    out = {**first.figures("Before"), **last.figures("After"), "durationSeconds": round(seconds, 3)}
    out["sizeRatio"] = round(last.size_bytes / first.size_bytes, 6) if first.size_bytes else 0.0
    if first.parameters and last.parameters is not None:
        out["parameterRatio"] = round(last.parameters / first.parameters, 6)
    if first.latency_ms:
        out["latencyRatio"] = round(last.latency_ms / first.latency_ms, 4)
    return out


def _gate(config: CompressConfig, first: Measurement, last: Measurement) -> dict:
    ev = config.evaluation
    change = evaluate.drop(first.quality, last.quality)
    gate = {"metric": ev.metric, "before": first.quality.value, "after": last.quality.value,
            "drop": change, "maxDrop": ev.max_accuracy_drop, "passed": change <= ev.max_accuracy_drop}
    if first.replies is not None and last.replies is not None:
        gate["greedyAgreement"] = round(evaluate.greedy_agreement(first.replies, last.replies), 6)
    return gate


def gate_message(gate: dict) -> str:
    return (f"quality gate failed: {gate['metric']} went from {gate['before']:.4g} to {gate['after']:.4g}, "
            f"a drop of {gate['drop']:.2%}, more than maxAccuracyDrop {gate['maxDrop']:.2%}")


def _empty(output: Path) -> None:
    """The output folder is this job's own: a retried attempt starts from nothing."""
    if output.exists():
        for child in output.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    output.mkdir(parents=True, exist_ok=True)


def _publish(final: Path, output: Path, work: Path) -> None:
    for item in final.iterdir():
        shutil.move(str(item), output / item.name)
    shutil.rmtree(work, ignore_errors=True)
