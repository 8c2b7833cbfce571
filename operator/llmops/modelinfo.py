"""The base model's config.json, when the operator can reach it, for the VRAM pre-flight.

Only public hub models are read (the operator never reads a Secret); the hub
endpoint is a setting so air-gapped clusters can point it at a mirror. Results,
misses included, are cached: a slow or absent hub must not slow reconciles.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
from typing import Any

log = logging.getLogger("llmops.modelinfo")

_cache: dict[tuple[str, str], dict[str, Any] | None] = {}
_lock = threading.Lock()


def hub_endpoint() -> str | None:
    """LLMOPS_HF_ENDPOINT, or the public hub; empty string turns fetching off."""
    value = os.environ.get("LLMOPS_HF_ENDPOINT", "https://huggingface.co")
    return value.rstrip("/") or None


def fetch_config(uri: str, revision: str | None, timeout: float = 3.0) -> dict[str, Any] | None:
    if not uri.startswith("hf://"):
        return None  # pvc:// and file:// live where the pods run, not here
    endpoint = hub_endpoint()
    if endpoint is None:
        return None
    repo, rev = uri[len("hf://"):], revision or "main"
    key = (f"{endpoint}/{repo}", rev)
    with _lock:
        if key in _cache:
            return _cache[key]
    url = f"{endpoint}/{repo}/resolve/{rev}/config.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (configured hub endpoint)
            found = json.loads(resp.read())
            found = found if isinstance(found, dict) else None
    except Exception as exc:  # unreachable, gated or not a transformers model: fall back to the spec
        log.info("model config of %s not readable (%s); using spec.baseModel.parameterCount", uri, exc)
        found = None
    with _lock:
        _cache[key] = found
    return found
