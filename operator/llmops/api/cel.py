"""Helpers to attach Kubernetes schema extensions to pydantic models."""

from __future__ import annotations

from typing import Any

# Marks a spec field that may not change after creation; llmops.crdgen turns
# the marker into CEL transition rules (self == oldSelf).
IMMUTABLE: dict[str, Any] = {"x-llmops-immutable": True}

# For object fields built by a default_factory: `default: {}` in the schema makes
# the API server fill in the nested defaults too, so `kubectl get -o yaml` shows them.
DEFAULTED: dict[str, Any] = {"default": {}}


def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One x-kubernetes-validations entry.

    field_path makes the API server name the offending field in its error
    instead of the object holding the rule.
    """
    entry: dict[str, Any] = {"rule": expr, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def rules(*entries: dict[str, Any]) -> dict[str, Any]:
    """json_schema_extra for a model carrying CEL rules."""
    return {"x-kubernetes-validations": list(entries)}


def exactly_one(fields: list[str], what: str) -> dict[str, Any]:
    """A rule accepting exactly one of the optional fields."""
    expr = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields) + " == 1"
    return rule(expr, f"exactly one of {', '.join(fields)} must be set for {what}", reason="FieldValueInvalid")
