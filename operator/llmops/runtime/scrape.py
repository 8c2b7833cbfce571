"""Reading a runner's Prometheus endpoint: the runners never talk to the API server, the
operator scrapes them and writes status (docs/runner-contract.md)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def parse(text: str, prefix: str) -> dict[str, float]:
    """The `<prefix>*` series of a /metrics page (first sample of each), names without the prefix."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(prefix) and family.samples:
            values[family.name[len(prefix):]] = family.samples[0].value
    return values


def scrape(host: str, port: int, timeout: float, prefix: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:  # noqa: S310 (pod IP, plain HTTP)
        return parse(resp.read().decode(), prefix)
