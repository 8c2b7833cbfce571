"""The JSON summary written to the Kubernetes termination-message file.

Kubernetes keeps at most 4096 bytes of it, so the writer drops detail (metrics first, then
message length) rather than let the kubelet cut the JSON in the middle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_BYTES = 4096


def build_message(status: str, reason: str, message: str, *, metrics: dict | None = None,
                  output_path: str | None = None, global_step: int | None = None,
                  extra: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "reason": reason, "message": message,
                            "metrics": metrics or {}}
    if output_path is not None:
        body["outputPath"] = output_path
        body["artifactUri"] = output_path
    if global_step is not None:
        body["globalStep"] = global_step
    body.update(extra or {})
    return body


def fit_to_limit(body: dict[str, Any], limit: int = MAX_BYTES) -> str:
    text = json.dumps(body, default=str)
    if len(text.encode()) <= limit:
        return text
    body = dict(body)
    # Keep the scalars the operator shows in status; nested detail is the first to go.
    for key in [k for k, v in body.items() if isinstance(v, (dict, list)) and k != "metrics"] + ["metrics"]:
        body[key] = {}
        text = json.dumps(body, default=str)
        if len(text.encode()) <= limit:
            return text
    overflow = len(text.encode()) - limit
    body["message"] = body["message"][: max(0, len(body["message"]) - overflow - 3)] + "..."
    return json.dumps(body, default=str)


def write_termination_message(path: str | None, body: dict[str, Any]) -> None:
    if not path:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(fit_to_limit(body))
    except OSError:
        # Running by hand without /dev/termination-log writable must not hide the real outcome.
        pass
