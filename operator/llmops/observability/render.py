"""Render Grafana dashboards to PNG with matplotlib, from their PromQL queries' real results.

Grafana cannot run where we build the README, but the README should show what each dashboard shows.
This draws a Grafana dashboard JSON model the way Grafana lays it out (24-column grid, rows as
headings) with the same queries run against a real Prometheus. It is a development tool: the operator
never imports it, so matplotlib is imported at the top.

    python -m llmops.observability.render --prometheus http://localhost:9090 \\
        --start 1767225600 --end 1767227400 --var namespace=demo --out docs/dashboards dashboards/llmops-serving.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

QueryRange = Callable[[str, float, float, float], list[dict]]

# Geometry, in inches at DPI: 16 in x 100 dpi = 1600 px, the README width. Grafana's grid is 24 columns
# and a height unit is 30 px + 8 px margin for a ~75 px column, i.e. about half a column: 0.36 in here.
FIG_W_IN, DPI, COLS = 16.0, 100, 24
COL_W_IN, UNIT_H_IN = FIG_W_IN / COLS, 0.36
HEADER_H_IN, FOOTER_H_IN, GAP_IN = 0.75, 0.1, 0.08
MAX_LEGEND, MAX_ITEMS = 8, 12  # timeseries legend entries; stat values, bars and table rows

TEXT, MUTED, BORDER, GRID, TRACK = "#1f2328", "#656d76", "#d0d7de", "#eaeef2", "#eaeef2"
VALUE, ERROR = "#37872d", "#c4162a"  # Grafana's default threshold green; its error red
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


# --- values and units --------------------------------------------------------------------------


def _num(x: float) -> str:
    """Grafana-like auto decimals: about three significant digits, no trailing zeros (250, 1.5, 0.042)."""
    a = abs(x)
    decimals = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 or a == 0 else min(6, 2 - math.floor(math.log10(a)))
    s = f"{x:.{decimals}f}"
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return "0" if s == "-0" else s


def _scaled(x: float, base: float, prefixes: list[str]) -> tuple[str, str]:
    i = 0
    while abs(x) >= base and i < len(prefixes) - 1:
        x, i = x / base, i + 1
    return _num(x), prefixes[i]


_TIME = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_TIME_LADDER = [(1e-6, 1e-9, "ns"), (1e-3, 1e-6, "µs"), (1, 1e-3, "ms"), (60, 1, "s"), (3600, 60, "min"),
                (86400, 3600, "hour"), (604800, 86400, "day"), (math.inf, 604800, "week")]
# Grafana's data units: IEC (bytes, kbytes = KiB...) and SI (decbytes...), as (base, prefix the value is in).
_BYTES = {"bytes": (1024, 0), "kbytes": (1024, 1), "mbytes": (1024, 2), "gbytes": (1024, 3),
          "decbytes": (1000, 0), "deckbytes": (1000, 1), "decmbytes": (1000, 2), "decgbytes": (1000, 3)}
# Grafana's throughput units: a count scaled by K/M/B/T with a fixed suffix.
_RATES = {"reqps": "req/s", "ops": "ops/s", "rps": "rd/s", "wps": "wr/s", "iops": "io/s", "cps": "c/s",
          "eps": "evt/s", "mps": "msg/s", "opm": "ops/m", "reqpm": "req/m"}


def format_value(value: float | None, unit: str | None) -> str:
    """Format a value as Grafana does for a panel's unit: 0.25 s -> "250 ms", 3 GiB, 42%, 1.5 K."""
    unit = unit or "none"  # Grafana's default when a panel sets no unit
    if value is None or math.isnan(value):
        return "No value" if value is None else "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if unit in _TIME:
        seconds = value * _TIME[unit]
        if seconds == 0:
            return f"0 {unit}"
        _, scale, name = next(rung for rung in _TIME_LADDER if abs(seconds) < rung[0])
        return f"{_num(seconds / scale)} {name}"
    if unit in _BYTES:
        base, start = _BYTES[unit]
        prefixes = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if base == 1024 else ["B", "kB", "MB", "GB", "TB", "PB"]
        return " ".join(_scaled(value, base, prefixes[start:]))
    if unit in ("percent", "percentunit"):
        return f"{_num(value * 100 if unit == 'percentunit' else value)}%"
    if unit == "none":
        return _num(value)
    if unit == "short":
        return "".join(_scaled(value, 1000, ["", " K", " Mil", " Bil", " Tri"]))
    # Throughput units, and any unit Grafana does not know (a custom suffix such as "tps"): scaled count + suffix.
    return "".join(_scaled(value, 1000, ["", "K", "M", "B", "T"])) + " " + _RATES.get(unit, unit)


# --- queries -----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def default_step(start: float, end: float) -> float:
    """About 300 points across the range, never under a 15 s scrape interval (Grafana's own rule is alike)."""
    return float(max(15, math.ceil((end - start) / 300)))


_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str], start: float, end: float, step: float) -> str:
    """Replace Grafana variables ($var, ${var}, ${var:fmt}, [[var]]) and built-ins ($__rate_interval...).

    Values go in verbatim, already formatted (a multi-value selection is a regex such as `a|b` or `.*`).
    Names that are neither built-ins nor in `values` stay as they are: `$1` in label_replace is PromQL's.
    """
    builtins = {
        "__interval": _duration(step), "__interval_ms": str(round(step * 1000)),
        # Grafana's is max($__interval + scrape interval, 4 x scrape interval). Not knowing the scrape
        # interval, take at least 4 steps and 1m, so that each step's rate() sees several samples.
        "__rate_interval": _duration(max(4 * step, 60.0)),
        "__range": _duration(end - start), "__range_s": str(round(end - start)),
        "__range_ms": str(round((end - start) * 1000)),
    }

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return builtins.get(name, values.get(name, m.group(0)))

    return _VAR.sub(repl, expr)


def _variable_values(dashboard: dict, given: dict[str, str]) -> dict[str, str]:
    values = {}
    for var in (dashboard.get("templating") or {}).get("list", []):
        if var.get("name"):
            # A constant is fixed by the dashboard; any other variable not given means "All".
            values[var["name"]] = str(var.get("query", "")) if var.get("type") == "constant" else ".*"
    return values | dict(given)


@dataclass
class _Series:
    name: str
    labels: dict[str, str]
    t: np.ndarray  # unix seconds
    v: np.ndarray


def _legend(fmt: str | None, labels: dict[str, str], expr: str) -> str:
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(.+?)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    # Grafana's automatic name: metric{label="value", ...}; the query itself for a bare aggregate.
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    name = labels.get("__name__", "")
    return f"{name}{{{rest}}}" if rest else (name or expr)


def _to_series(item: dict, fmt: str | None, expr: str) -> _Series:
    labels = item.get("metric") or {}
    values = item.get("values") or ([item["value"]] if "value" in item else [])
    t = np.array([float(ts) for ts, _ in values], dtype=float)
    v = np.array([float(x) for _, x in values], dtype=float)  # float() reads Prometheus' "NaN", "+Inf"
    return _Series(_legend(fmt, labels, expr), labels, t, v)


def _as_of_latest(found: list[_Series]) -> list[_Series]:
    """An instant query's answer, as of the last moment the range had any: Grafana asks at "now",
    where a phase that changed or a pod that finished has no series any more. Taken at the range's
    end instead, a finished run would show nothing, and a last value per series would count the
    phases an object passed through."""
    if not found:
        return found
    latest = max(s.t[-1] for s in found)
    return [s for s in found if s.t[-1] == latest]


def _finite(v: np.ndarray) -> np.ndarray:
    return v[~np.isnan(v)]


# Stat-like panels show one value per series: Grafana's reduceOptions.calcs, "lastNotNull" by default.
_REDUCERS = {
    "lastNotNull": lambda v: _finite(v)[-1], "last": lambda v: v[-1], "mean": lambda v: _finite(v).mean(),
    "max": lambda v: _finite(v).max(), "min": lambda v: _finite(v).min(), "sum": lambda v: _finite(v).sum(),
}


def _reduce(panel: dict, v: np.ndarray) -> float:
    calcs = ((panel.get("options") or {}).get("reduceOptions") or {}).get("calcs") or ["lastNotNull"]
    return float(_REDUCERS.get(calcs[0], _REDUCERS["lastNotNull"])(v)) if _finite(v).size else math.nan


# --- layout and drawing ------------------------------------------------------------------------


def _grid(p: dict) -> dict:
    return {"x": 0, "y": 0, "w": 12, "h": 8} | (p.get("gridPos") or {})


def _layout(panels: list[dict]) -> list[tuple[dict, int]]:
    """(panel, top grid row) for each panel, collapsed rows drawn expanded.

    Grafana keeps a collapsed row's panels inside it with the y they have when expanded, and moves the
    panels below the row up to row.y + 1: expanding pushes those down by the hidden block's height.
    """
    placed, shift = [], 0
    for p in sorted(panels, key=lambda p: (_grid(p)["y"], _grid(p)["x"])):
        y = _grid(p)["y"] + shift
        placed.append((p, y))
        children = (p.get("panels") or []) if p.get("type") == "row" else []
        if children:
            top = min(_grid(c)["y"] for c in children)
            for c in sorted(children, key=lambda c: (_grid(c)["y"], _grid(c)["x"])):
                placed.append((c, y + 1 + _grid(c)["y"] - top))
            shift += max(_grid(c)["y"] + _grid(c)["h"] for c in children) - top
    return placed


def _clip(s: str, width_in: float, size: float) -> str:
    n = max(3, int(width_in * 72 / (0.55 * size)))  # ~0.55 em per character
    return s if len(s) <= n else s[: n - 1] + "…"


class _Canvas:
    """A figure addressed in inches from its top-left corner, as a dashboard grid is."""

    def __init__(self, height_in: float):
        self.h = height_in
        self.fig = Figure(figsize=(FIG_W_IN, height_in), dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.fig)  # Agg explicitly: no pyplot state, whatever MPLBACKEND says

    def rect(self, x, y, w, h):
        return [x / FIG_W_IN, 1 - (y + h) / self.h, max(w, 0.05) / FIG_W_IN, max(h, 0.05) / self.h]

    def axes(self, x, y, w, h):
        ax = self.fig.add_axes(self.rect(x, y, w, h))
        ax.set_facecolor("none")
        return ax

    def text(self, x, y, s, **kw):
        return self.fig.text(x / FIG_W_IN, 1 - y / self.h, s, **({"color": TEXT} | kw))


class _BinaryLocator(MaxNLocator):
    """Round ticks in the binary unit the axis shows (1, 2, 3 GiB), not in decimal bytes (1.4, 2.79 GiB)."""

    def tick_values(self, vmin, vmax):
        top = max(abs(vmin), abs(vmax), 1.0)
        scale = 1024.0 ** min(5, int(math.log(top, 1024)))
        return super().tick_values(vmin / scale, vmax / scale) * scale


def _draw_timeseries(c: _Canvas, box, panel, series: list[_Series], unit, start, end, step):
    x, y, w, h = box
    shown = min(len(series), MAX_LEGEND)
    entries = shown + (len(series) > shown)
    ncol = max(1, min(entries, int(w // 2.4)))
    legend_h = math.ceil(entries / ncol) * 0.17 + 0.04
    plot_h = h - 0.33 - legend_h
    ax = c.axes(x + 0.72, y + 0.05, w - 0.82, plot_h)
    for i, s in enumerate(series):
        # Prometheus leaves out steps without samples; Grafana breaks the line there rather than bridge it.
        gaps = np.nonzero(np.diff(s.t) > 1.5 * step)[0] + 1
        t, v = np.insert(s.t, gaps, s.t[gaps - 1]), np.insert(s.v, gaps, np.nan)
        when = np.round(t * 1000).astype("int64").astype("datetime64[ms]")
        ax.plot(when, v, color=PALETTE[i % len(PALETTE)], lw=1.4, marker="o" if len(t) == 1 else None, ms=3)
    ax.set_xlim(np.datetime64(round(start * 1000), "ms"), np.datetime64(round(end * 1000), "ms"))
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    if defaults.get("min") is not None or defaults.get("max") is not None:
        ax.set_ylim(defaults.get("min"), defaults.get("max"))
    span = end - start
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=timezone.utc, minticks=3, maxticks=max(3, int(w / 0.75))))
    ax.xaxis.set_major_formatter(mdates.DateFormatter(
        "%H:%M:%S" if span <= 900 else "%H:%M" if span <= 86400 else "%m-%d %H:%M" if span <= 3 * 86400 else "%m-%d",
        tz=timezone.utc))
    ax.yaxis.set_major_locator((_BinaryLocator if _BYTES.get(unit, (0,))[0] == 1024 else MaxNLocator)(nbins=max(1, int(plot_h / 0.3))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_value(value, unit)))
    ax.tick_params(labelsize=8, colors=MUTED, length=0)
    ax.grid(color=GRID, lw=0.7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(BORDER)
    handles = ax.get_lines()[:shown]
    labels = [_clip(s.name, w / ncol - 0.4, 7.5) for s in series[:shown]]
    if len(series) > shown:
        handles.append(Line2D([], [], color="none"))
        labels.append(f"+{len(series) - shown} more")
    c.fig.legend(handles, labels, loc="upper left", bbox_to_anchor=c.rect(x + 0.1, y + h - legend_h, 0, 0)[:2],
                 ncol=ncol, frameon=False, fontsize=7.5, handlelength=1.2, columnspacing=1.2, borderaxespad=0,
                 borderpad=0, labelcolor=TEXT)


def _draw_stat(c: _Canvas, box, panel, series: list[_Series], unit):
    x, y, w, h = box
    items = [(s.name, format_value(_reduce(panel, s.v), unit)) for s in series[:MAX_ITEMS]]
    cols = max(1, min(len(items), round(math.sqrt(len(items) * w / h))))
    cw, ch = w / cols, h / math.ceil(len(items) / cols)
    for i, (name, text) in enumerate(items):
        cx, top = x + (i % cols + 0.5) * cw, y + (i // cols) * ch
        named = len(items) > 1  # Grafana shows a lone series' value without its name
        size = max(8.0, min(40.0, ch * 72 * (0.4 if named else 0.55), 0.85 * cw * 72 / (0.62 * len(text))))
        c.text(cx, top + ch * (0.42 if named else 0.5), text, size=size, ha="center", va="center",
               weight="bold", color=VALUE)
        if named:
            c.text(cx, top + ch * 0.8, _clip(name, cw, 8), size=8, ha="center", va="center", color=MUTED)
    if len(series) > MAX_ITEMS:
        c.text(x + w, y + h, f"+{len(series) - MAX_ITEMS} more", size=7.5, ha="right", va="bottom", color=MUTED)


def _draw_bargauge(c: _Canvas, box, panel, series: list[_Series], unit):
    x, y, w, h = box
    items = [(s.name, _reduce(panel, s.v)) for s in series[:MAX_ITEMS]]
    values = np.array([v for _, v in items])
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    lo = defaults.get("min") or 0.0
    finite = _finite(values)
    hi = defaults.get("max") or {"percent": 100.0, "percentunit": 1.0}.get(unit) or (
        finite.max() if finite.size and finite.max() > lo else lo + 1)
    label_w = min(0.4 * w, 0.15 + 0.06 * max(len(n) for n, _ in items))
    ax = c.axes(x + label_w, y, w - label_w - 0.85, h)
    rows = np.arange(len(items))
    ax.barh(rows, hi - lo, left=lo, height=0.62, color=TRACK)
    ax.barh(rows, np.clip(np.nan_to_num(values, nan=lo), lo, hi) - lo, left=lo, height=0.62, color=VALUE)
    for row, value in zip(rows, values):
        ax.text(1.02, row, format_value(value, unit), transform=ax.get_yaxis_transform(), va="center",
                size=9, weight="bold", color=VALUE)
    ax.set_xlim(lo, hi)
    ax.set_ylim(max(len(items), 2) - 0.5, -0.5)
    ax.set_yticks(rows, [_clip(n, label_w, 8) for n, _ in items], fontsize=8, color=TEXT)
    ax.tick_params(length=0)
    ax.xaxis.set_visible(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if len(series) > MAX_ITEMS:
        c.text(x + w, y + h, f"+{len(series) - MAX_ITEMS} more", size=7.5, ha="right", va="bottom", color=MUTED)


def _draw_table(c: _Canvas, box, panel, series: list[_Series], unit):
    x, y, w, h = box
    # Labels that tell rows apart first; as many columns as fit (Grafana would scroll sideways).
    keys = sorted({k for s in series for k in s.labels},
                  key=lambda k: (len({s.labels.get(k) for s in series}) == 1, k))[: max(1, int(w / 1.0) - 1)]
    row_h = 0.22
    fit = min(MAX_ITEMS, max(1, int(h / row_h) - 1))
    rows = series if len(series) <= fit else series[: fit - 1]
    colw = w / (len(keys) + 1)
    cells = [[_clip(s.labels.get(k, ""), colw, 8) for k in keys] + [format_value(_reduce(panel, s.v), unit)]
             for s in rows]
    if len(rows) < len(series):
        cells.append([f"+{len(series) - len(rows)} more"] + [""] * len(keys))
    frac = min(1.0, (len(cells) + 1) * row_h / h)
    ax = c.axes(x, y, w, h)
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=[_clip(k, colw, 8) for k in keys] + ["Value"], cellLoc="left",
                     colLoc="left", bbox=[0, 1 - frac, 1, frac])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (r, _), cell in table.get_celld().items():
        cell.set_edgecolor(BORDER)
        cell.set_linewidth(0.5)
        if r == 0:
            cell.set_facecolor("#f6f8fa")
            cell.set_text_props(weight="bold")


_DRAW = {"timeseries": _draw_timeseries, "stat": _draw_stat, "gauge": _draw_stat, "bargauge": _draw_bargauge,
         "table": _draw_table}


# --- the dashboard -----------------------------------------------------------------------------


@dataclass
class PanelSummary:
    type: str
    supported: bool
    series: int = 0  # series drawn, all of the panel's queries together
    has_data: bool = False
    legends: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "refId: message" for each query that failed


@dataclass
class RenderSummary:
    title: str
    out: Path
    panels: dict[str, PanelSummary] = field(default_factory=dict)  # by title; a repeated title gets " #2"
    queries: list[str] = field(default_factory=list)  # the substituted exprs, in the order queried

    @property
    def without_data(self) -> list[str]:
        return [title for title, p in self.panels.items() if not p.has_data]


def render_dashboard(dashboard: dict, query_range: QueryRange, start: float, end: float, out: Path,
                     variables: dict[str, str] | None = None, step: float | None = None) -> RenderSummary:
    """Query every panel of a Grafana dashboard model over [start, end] and draw the dashboard to `out` (PNG)."""
    step = step or default_step(start, end)
    values = _variable_values(dashboard, variables or {})
    placed = _layout(dashboard.get("panels") or [])
    units = max((row + _grid(p)["h"] for p, row in placed), default=0)
    c = _Canvas(HEADER_H_IN + units * UNIT_H_IN + FOOTER_H_IN)
    title = dashboard.get("title") or "Dashboard"
    c.text(0.15, 0.12, title, size=17, weight="bold", va="top")
    when = " – ".join(datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M") for t in (start, end))
    given = "".join(f" · {k}={v}" for k, v in (variables or {}).items())
    c.text(0.15, 0.5, f"{when} UTC · step {_duration(step)}{given}", size=9, va="top", color=MUTED)
    summary = RenderSummary(title, Path(out))

    for panel, row in placed:
        gp, kind = _grid(panel), panel.get("type", "")
        x, y = gp["x"] * COL_W_IN + GAP_IN / 2, HEADER_H_IN + row * UNIT_H_IN + GAP_IN / 2
        w, h = gp["w"] * COL_W_IN - GAP_IN, gp["h"] * UNIT_H_IN - GAP_IN
        if kind == "row":
            c.text(x + 0.05, y + h / 2, panel.get("title", ""), size=12.5, weight="bold", va="center")
            continue
        name = panel.get("title") or "(untitled)"
        key, n = name, 1
        while key in summary.panels:
            n += 1
            key = f"{name} #{n}"
        ps = summary.panels[key] = PanelSummary(kind, supported=kind in _DRAW)
        series: list[_Series] = []
        for target in (panel.get("targets") or []) if ps.supported else []:
            if target.get("hide") or not target.get("expr"):
                continue  # Grafana does not draw hidden queries; non-PromQL targets have no expr
            expr = substitute(target["expr"], values, start, end, step)
            summary.queries.append(expr)
            try:
                found = [_to_series(i, target.get("legendFormat"), expr) for i in query_range(expr, start, end, step)]
            except Exception as exc:  # one bad query (or answer) costs its panel, not the whole dashboard
                ps.errors.append(f"{target.get('refId', '?')}: {exc}")
                continue
            found = [s for s in found if s.t.size]
            series += _as_of_latest(found) if target.get("instant") else found
        ps.series, ps.has_data, ps.legends = len(series), bool(series), [s.name for s in series]

        c.fig.add_artist(Rectangle(c.rect(x, y, w, h)[:2], w / FIG_W_IN, h / c.h, transform=c.fig.transFigure,
                                   facecolor="none", edgecolor=BORDER, lw=0.8, zorder=-1))
        c.text(x + 0.12, y + 0.1, _clip(name, w - 0.6, 10), size=10, weight="bold", va="top")
        if ps.errors:  # Grafana's red corner marker, with the message when nothing else is drawn
            c.text(x + w - 0.1, y + 0.1, f"! {len(ps.errors)} {'query' if len(ps.errors) == 1 else 'queries'} failed", size=8, ha="right", va="top", color=ERROR)
        body = (x + 0.1, y + 0.38, w - 0.2, h - 0.46)
        middle = (x + w / 2, y + h / 2 + 0.1)
        if not ps.supported:
            c.text(*middle, f"unsupported panel type: {kind or '?'}", size=9, style="italic", ha="center",
                   va="center", color=MUTED)
        elif series:
            args = (start, end, step) if kind == "timeseries" else ()
            _DRAW[kind](c, body, panel, series, ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit"),
                        *args)
        elif ps.errors:
            c.text(*middle, textwrap.fill(ps.errors[0], int(w * 72 / (0.55 * 8))), size=8, ha="center",
                   va="center", color=ERROR)
        else:
            c.text(*middle, "No data", size=12, ha="center", va="center", color=MUTED)

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    c.fig.savefig(out, dpi=DPI, facecolor="white")
    return summary


# --- Prometheus and the command line -----------------------------------------------------------


class PrometheusError(RuntimeError):
    pass


def prometheus_query_range(base_url: str, timeout: float = 30.0) -> QueryRange:
    """A `query_range(expr, start, end, step)` that asks the Prometheus at base_url's /api/v1/query_range."""
    url = base_url.rstrip("/") + "/api/v1/query_range"

    def query_range(expr: str, start: float, end: float, step: float) -> list[dict]:
        body = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=timeout) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as exc:
            # A bad query is a 400/422 whose JSON body says what is wrong; keep that, not just the code.
            try:
                payload = json.load(exc)
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code} for {expr!r}") from exc
        except urllib.error.URLError as exc:
            raise PrometheusError(f"{url}: {exc.reason}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {payload.get('errorType', 'error')}: "
                                  f"{payload.get('error', 'no error message')}")
        return payload["data"]["result"]

    return query_range


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops.observability.render", description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://localhost:9090")
    parser.add_argument("--start", type=float, required=True, help="range start, unix seconds")
    parser.add_argument("--end", type=float, required=True, help="range end, unix seconds")
    parser.add_argument("--step", type=float, help="query step in seconds (default: about 300 points)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a dashboard variable")
    parser.add_argument("--out", type=Path, required=True, help="folder for DASHBOARD-stem.png")
    parser.add_argument("dashboards", nargs="+", type=Path, metavar="DASHBOARD.json")
    args = parser.parse_args(argv)
    if bad := [v for v in args.var if "=" not in v]:
        parser.error(f"--var takes NAME=VALUE, not {bad[0]!r}")
    variables = dict(v.split("=", 1) for v in args.var)
    query_range, failed = prometheus_query_range(args.prometheus), False
    for path in args.dashboards:
        model = json.loads(path.read_text())
        model = model.get("dashboard", model)  # the HTTP API's and some exports' wrapper
        out = args.out / f"{path.stem}.png"
        summary = render_dashboard(model, query_range, args.start, args.end, out, variables, args.step)
        with_data = len(summary.panels) - len(summary.without_data)
        print(f"{path} -> {out}: {with_data}/{len(summary.panels)} panels with data")
        for title in summary.without_data:
            p = summary.panels[title]
            why = f" (unsupported type {p.type})" if not p.supported else f" ({'; '.join(p.errors)})" if p.errors else ""
            print(f"  no data: {title}{why}")
        failed = failed or any(p.errors for p in summary.panels.values())
    return 1 if failed else 0  # a failing query is a broken dashboard; empty panels may just be idle


if __name__ == "__main__":
    sys.exit(main())
