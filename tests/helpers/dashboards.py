"""Render every generated dashboard against a real Prometheus and say which panels had data."""

from __future__ import annotations

import json
from pathlib import Path

from llmops.observability import dashboards, render
from llmops.observability.promql import series_names


def panels(board: dict) -> dict[str, set[str]]:
    """panel title → the series its queries read (rows' nested panels included)."""
    out: dict[str, set[str]] = {}
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            # Grafana's variables in, as a render would put them ($__rate_interval a duration, $namespace `.*`).
            exprs = [render.substitute(t["expr"], {}, 0, 3600, 15) for t in inner.get("targets") or []]
            if exprs:
                out[inner["title"]] = set().union(*(series_names(e) for e in exprs))
    return out


def render_all(prometheus_url: str, start: float, end: float, variables: dict[str, str], out: Path,
               step: float = 2) -> dict[str, tuple[render.RenderSummary, dict[str, set[str]]]]:
    """file name → (what rendering it queried and drew, each panel's series)."""
    query = render.prometheus_query_range(prometheus_url)
    results = {}
    for name, text in dashboards.rendered().items():
        board = json.loads(text)
        summary = render.render_dashboard(board, query, start, end, out / name.replace(".json", ".png"), variables, step=step)
        results[name] = (summary, panels(board))
    return results


def problems(results, must_have_data) -> list[str]:
    """Query errors anywhere, and panels that `must_have_data(series)` but drew nothing."""
    found = []
    for name, (summary, reads) in results.items():
        for title, panel in summary.panels.items():
            found += [f"{name} / {title}: {error}" for error in panel.errors]
            if not panel.has_data and must_have_data(reads.get(title, set())):
                found.append(f"{name} / {title}: no data (reads {sorted(reads.get(title, set()))})")
    return found
