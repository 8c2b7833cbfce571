"""Adapters, live: make every ready replica serve exactly the adapters the spec lists.

Both engines speak vLLM's runtime LoRA API: `GET /v1/models` lists what a replica serves
(an adapter's entry has a `parent`), `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter` change it without a restart. Each pass loads what is missing and
unloads what is no longer wanted, so running it again changes nothing: it is idempotent like a
server-side apply, and a replica that restarted and missed an adapter gets it back on the next pass.

This runs while observing (it is I/O, so not in the pure plan); the plan only reads the outcome.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from .builders import PORT

LOOK_TIMEOUT = 3.0
Call = Callable[[str, str, dict[str, Any] | None, float], Any]  # (method, url, json body, timeout) -> parsed reply


@dataclass
class ReplicaAdapters:
    """What one replica serves after the pass, and what it refused (adapter name -> its words)."""

    pod: str
    loaded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: str | None = None


class ServerSaidNo(Exception):
    """The server answered a load or unload with an error."""


def http_call(method: str, url: str, body: dict[str, Any] | None, timeout: float) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 (a pod IP, plain HTTP)
            text = reply.read().decode()
    except urllib.error.HTTPError as exc:
        raise ServerSaidNo(_error_text(exc.read().decode(errors="replace")) or f"HTTP {exc.code}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # vLLM answers a load with a plain sentence


def _error_text(text: str) -> str:
    """The message of an OpenAI-style error body (vLLM's and ours), else the text itself."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


def served_adapters(models: Any, base: str) -> set[str]:
    """Adapter names in a `/v1/models` reply: every model but the base (vLLM marks them with `parent`).
    ValueError for anything else answering on that address (not an OpenAI server)."""
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
        raise ValueError(f"not an OpenAI /v1/models reply: {str(models)[:80]!r}")
    return {m["id"] for m in data if m["id"] != base}


def sync_replica(pod_name: str, ip: str, base: str, wanted: dict[str, str], timeout: float, call: Call = http_call) -> ReplicaAdapters:
    """Load the missing adapters of `wanted` (name -> path in the pod), unload the others."""
    out = ReplicaAdapters(pod_name)
    root = f"http://{ip}:{PORT}"
    try:
        # A short look first: a replica that does not answer must not hold a reconcile worker long.
        out.loaded = served_adapters(call("GET", f"{root}/v1/models", None, min(timeout, LOOK_TIMEOUT)), base)
    except (OSError, ServerSaidNo, ValueError) as exc:
        out.unreachable = f"{pod_name}: {exc}"
        return out
    for name in sorted(out.loaded - set(wanted)):
        try:
            call("POST", f"{root}/v1/unload_lora_adapter", {"lora_name": name}, timeout)
            out.loaded.discard(name)
        except (OSError, ServerSaidNo) as exc:
            out.failed[name] = f"unloading on {pod_name}: {exc}"
    for name in sorted(set(wanted) - out.loaded):
        try:
            call("POST", f"{root}/v1/load_lora_adapter", {"lora_name": name, "lora_path": wanted[name]}, timeout)
            out.loaded.add(name)
        except (OSError, ServerSaidNo) as exc:
            out.failed[name] = f"{pod_name}: {exc}"
    return out
