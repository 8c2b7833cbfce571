"""Generate the CustomResourceDefinitions in crds/ from the pydantic API models.

    llmops-crdgen            # rewrite crds/ and the Helm chart's generated files
    llmops-crdgen --check    # exit 1 when crds/ is stale

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3
subset: no $ref, no null types, no title, every node typed, and bounded
strings and lists so that CEL rules stay within the API server's cost budget.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from .api import CATEGORY, GROUP, KINDS, VERSION, Kind
from .rbac import CLUSTER_RULES, CLUSTER_SCOPED_RULES, NAMESPACED_RULES, PEERING_CRDS

# Bounds added where a model gives none: the API server estimates CEL cost from
# them and refuses a CRD whose rules could run unbounded.
DEFAULT_MAX_STRING = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 256
IMMUTABLE_MARK = "x-llmops-immutable"
MAX_OBJECT_NAME = 52
DROPPED_KEYS = {"title", "$defs", "discriminator"}
REPO_ROOT = Path(__file__).resolve().parents[2]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every $ref by a copy of its definition, keeping sibling keys (description)."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = {**target, **siblings}
        # A field's own rules come after its type's rules.
        if "x-kubernetes-validations" in target and "x-kubernetes-validations" in siblings:
            merged["x-kubernetes-validations"] = target["x-kubernetes-validations"] + siblings["x-kubernetes-validations"]
        return _inline(merged, defs)
    return {k: _inline(v, defs) for k, v in node.items()}


def _drop_null(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` arrives as anyOf [X, null]: a missing field says None, so keep X alone."""
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) == len(options):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(non_null) == 1:
        return {**non_null[0], **rest}
    return {**rest, "anyOf": non_null}


def _structural(node: Any, in_any_of: bool = False) -> Any:
    """Turn one JSON-Schema node (already inlined) into a structural schema node."""
    if not isinstance(node, dict):
        return node
    node = _drop_null(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key in ("properties",):
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value)
        elif key == "anyOf":
            out[key] = [_structural(o, in_any_of=True) for o in value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "format" and value == "date-time":
            out[key] = value
        elif key == "additionalProperties" and value is False:
            continue  # Kubernetes prunes unknown fields anyway.
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out and "required" in out:
        out["required"] = sorted(out["required"])
    if not in_any_of:  # int-or-string branches must stay bare {type: ...}
        _bound(out)
    return out


def _bound(node: dict[str, Any]) -> None:
    kind = node.get("type")
    if kind == "string" and "maxLength" not in node and "enum" not in node and node.get("format") != "date-time":
        node["maxLength"] = DEFAULT_MAX_STRING
    elif kind == "array" and "maxItems" not in node:
        node["maxItems"] = DEFAULT_MAX_ITEMS
    elif kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
        node["maxProperties"] = DEFAULT_MAX_PROPERTIES


def _immutability_rules(spec: dict[str, Any]) -> None:
    """Turn the IMMUTABLE markers of spec fields into CEL transition rules.

    A rule on the field itself (self == oldSelf) names the field in the error but
    only runs when the field exists before and after, so optional fields also get
    a rule on the spec that forbids adding or removing them.
    """
    required = set(spec.get("required", []))
    spec_rules = spec.setdefault("x-kubernetes-validations", [])
    for name, prop in spec["properties"].items():
        if not prop.pop(IMMUTABLE_MARK, False):
            continue
        prop.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"{name} is immutable", "reason": "FieldValueForbidden"}
        )
        if name not in required and "default" not in prop:
            spec_rules.append(
                {
                    "rule": f"has(self.{name}) == has(oldSelf.{name})",
                    "message": f"{name} is immutable: it cannot be added or removed after creation",
                    "fieldPath": f".{name}",
                    "reason": "FieldValueForbidden",
                }
            )
    if not spec_rules:
        del spec["x-kubernetes-validations"]


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _structural(_inline(raw, defs))


def openapi_schema(kind: Kind) -> dict[str, Any]:
    spec = model_schema(kind.spec)
    _immutability_rules(spec)
    status = model_schema(kind.status)
    return {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                # Children are named <name>-<suffix> and names become pod labels (63 characters).
                "rule": f"size(self.metadata.name) <= {MAX_OBJECT_NAME}",
                "message": f"metadata.name must be at most {MAX_OBJECT_NAME} characters",
                "reason": "FieldValueInvalid",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: llmops.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Always {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(kind: Kind) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "llmops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": c.name,
                            "type": c.type,
                            "jsonPath": c.json_path,
                            **({"description": c.description} if c.description else {}),
                            **({"priority": c.priority} if c.priority else {}),
                        }
                        for c in kind.columns
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


HEADER = "# Generated by `llmops-crdgen` from operator/llmops/api. Do not edit by hand.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def targets(root: Path) -> dict[Path, str]:
    """Every file the generator owns, with its wanted content."""
    chart = root / "charts" / "llmops"
    texts = {f"{GROUP}_{kind.plural}.yaml": render(kind) for kind in KINDS}
    texts["kopf.dev_peerings.yaml"] = HEADER + yaml.safe_dump_all(PEERING_CRDS, sort_keys=False, width=120)
    files: dict[Path, str] = {}
    for name, text in texts.items():
        files[root / "crds" / name] = text
        files[chart / "crds" / name] = text
    for name, rules in (("clusterrole-rules", CLUSTER_RULES), ("namespaced-rules", NAMESPACED_RULES), ("cluster-scoped-rules", CLUSTER_SCOPED_RULES)):
        files[chart / "files" / f"{name}.yaml"] = HEADER + yaml.safe_dump(rules, sort_keys=False, width=120)
    files.update(observability_files(root))
    files.update(argocd_files(root))
    return files


def observability_files(root: Path) -> dict[Path, str]:
    """Dashboards and alerts, from code: for a plain Prometheus/Grafana under dashboards/, and the
    chart's copies (Helm reads only files inside the chart); the metrics catalogue's page."""
    from .observability import alerts, catalogue, dashboards  # dev-only libraries: not at the operator's run time

    chart_files = root / "charts" / "llmops" / "files"
    files = {root / "dashboards" / "alerts.yaml": alerts.render(alerts.SEEDS),
             chart_files / "alerts.yaml": alerts.render(alerts.PLACEHOLDERS),
             root / "docs" / "metrics.md": catalogue.markdown()}
    for name, text in dashboards.rendered().items():
        files[root / "dashboards" / name] = text
        files[chart_files / "dashboards" / name] = text
    return files


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the Lua scripts) as `|` blocks, as a person would write them."""


_LiteralDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


# The two job kinds share one life (runtime/joblife.py), so one script; a new kind needs an entry.
HEALTH_SCRIPTS = {"FineTuneJob": "Job.lua", "CompressionJob": "Job.lua", "InferenceService": "InferenceService.lua"}


def argocd_files(root: Path) -> dict[Path, str]:
    """Argo CD's health checks, one source (argocd/health/*.lua), installed two ways: the
    `argocd-cm` ConfigMap to merge-patch, and the argo-cd Helm chart's `configs.cm` values.
    The scripts are read from `root`, else from this checkout (a bare --root for a check)."""
    source = root / "argocd" / "health"
    if not source.is_dir():
        source = REPO_ROOT / "argocd" / "health"
    # Every kind has one: a new kind without its script stops the generator here.
    data = {f"resource.customizations.health.{GROUP}_{k.kind}": (source / HEALTH_SCRIPTS[k.kind]).read_text() for k in KINDS}
    header = "# Generated by `llmops-crdgen` from argocd/health/*.lua. Do not edit by hand.\n"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "argocd-cm", "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}},
                  "data": data}
    return {root / "argocd" / "argocd-cm.yaml": header + yaml.dump(config_map, Dumper=_LiteralDumper, sort_keys=False, width=120),
            root / "argocd" / "argo-cd-values.yaml": header + yaml.dump({"configs": {"cm": data}}, Dumper=_LiteralDumper, sort_keys=False, width=120)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    stale = []
    for path, text in targets(args.root).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("stale CRDs (run llmops-crdgen):", *[str(p) for p in stale], sep="\n  ", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
