"""The series a PromQL expression reads, so the alerts and dashboards can be checked against the catalogue."""

from __future__ import annotations

from typing import Any

import promql_parser

# The attributes under which promql_parser's nodes hold their sub-expressions: binary operands,
# the argument of parentheses / unary minus / aggregations / subqueries, a function's arguments,
# a range selector's selector, and an aggregation's parameter (topk's k may itself be a query).
_CHILDREN = ("lhs", "rhs", "expr", "args", "vector_selector", "param")


def series_names(expr: str) -> set[str]:
    """Every metric name `expr` selects. A selector that names no single series (`{job="x"}`,
    `{__name__=~"a|b"}`) raises ValueError: nothing could check what it reads."""
    names: set[str] = set()
    _walk(promql_parser.parse(expr), names, expr)
    return names


def _walk(node: Any, names: set[str], expr: str) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, names, expr)
        return
    if isinstance(node, promql_parser.VectorSelector):
        names.add(_selector_name(node, expr))
        return
    for attribute in _CHILDREN:
        child = getattr(node, attribute, None)
        if isinstance(child, (list, promql_parser.Expr)):
            _walk(child, names, expr)


def _selector_name(selector: promql_parser.VectorSelector, expr: str) -> str:
    if selector.name:
        return selector.name
    # `{__name__="x"}` is the same selector as `x`; anything looser reads an open set of series.
    by_name = [m for m in selector.matchers.matchers if m.name == "__name__"]
    if len(by_name) == 1 and by_name[0].op == promql_parser.MatchOp.Equal and not selector.matchers.or_matchers:
        return by_name[0].value
    raise ValueError(f"{selector} in {expr!r} does not name one series")
