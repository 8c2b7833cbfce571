"""Training progress, read from a runner's Prometheus endpoint.

The runner never talks to the API server: it serves llmops_finetune_* gauges
(docs/runner-contract.md) and the operator scrapes rank 0 and writes status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...runtime import scrape
from ...runtime.conditions import timestamp

PREFIX = "llmops_finetune_"
FIELDS = {
    "step": "step",
    "total_steps": "totalSteps",
    "epoch": "epoch",
    "loss": "loss",
    "eval_loss": "evalLoss",
    "learning_rate": "learningRate",
    "tokens_per_second": "tokensPerSecond",
}


def parse(text: str) -> dict[str, float]:
    """The llmops_finetune_* gauges (first sample of each) from a /metrics page."""
    return scrape.parse(text, PREFIX)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_status(values: dict[str, float], started: datetime | None, at: datetime) -> dict[str, Any]:
    """status.progress from scraped values; the ETA extrapolates the average step time so far."""
    out: dict[str, Any] = {}
    for metric, key in FIELDS.items():
        if metric in values and values[metric] == values[metric]:  # skip NaN (not yet reported)
            out[key] = int(values[metric]) if key in ("step", "totalSteps") else round(values[metric], 6)
    step, total = out.get("step"), out.get("totalSteps")
    if total:
        out["percent"] = f"{min(100, int(100 * (step or 0) / total))}%"
        if step and started:
            elapsed = (at - started).total_seconds()
            out["eta"] = format_duration(elapsed / step * (total - step))
    out["updatedAt"] = timestamp(at)
    return out
