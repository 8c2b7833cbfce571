"""Types shared by the three llmops kinds.

These pydantic models are the single source of truth for the CRD schemas
(see ``llmops.crdgen``): every ``Field(description=...)`` becomes the text of
``kubectl explain``, every plain default becomes a schema default, and the
``x-kubernetes-validations`` attached here become CEL rules that the API server
enforces. The operator parses the objects it reads with the same models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from .cel import rule, rules

GROUP = "llmops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A model or data location. hf:// is a Hugging Face Hub id, pvc:// a path on a
# PersistentVolumeClaim, s3:// an object store prefix, file:// a path that
# already exists inside the workload image (tests and air-gapped clusters).
URI_PATTERN = r"^(hf|pvc|s3|gs|file)://[^\s]+$"
OUTPUT_URI_PATTERN = r"^(pvc|s3|gs|file)://[^\s]+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Uri = Annotated[
    str,
    Field(
        pattern=URI_PATTERN,
        max_length=1024,
        description="Location: hf://org/name, pvc://claim/path, s3://bucket/path, gs://bucket/path or file:///path.",
    ),
]
OutputUri = Annotated[
    str,
    Field(
        pattern=OUTPUT_URI_PATTERN,
        max_length=1024,
        description="Where results are written: pvc://claim/path, s3://bucket/path, gs://bucket/path or file:///path.",
    ),
]
ObjectName = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]

# cpu: 4, memory: 64Gi — Kubernetes quantities are written both as numbers and
# strings, so the schema must accept either (x-kubernetes-int-or-string).
# The string is checked by the API server's own quantity parser (the CEL quantity
# library, resource.ParseQuantity underneath) rather than by a regular expression
# here: a hand-written pattern accepted `1.2.3` and `8iiii`, and the Job built from
# them was refused only later, when the operator created it.
# A negative amount is a valid quantity but no valid request, hence the sign checks.
# The rule sits on the field itself so that the error names it (spec.resources.cpu).
QUANTITY_MAX_LENGTH = 64  # bounds the CEL cost estimate; real quantities are a dozen characters
QUANTITY_RULE = "type(self) == int ? self >= 0 : isQuantity(self) && !quantity(self).isLessThan(quantity('0'))"
QUANTITY_MESSAGE = "must be a non-negative Kubernetes quantity, e.g. 8, 500m, 64Gi or 1e3"
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            # Exactly this shape: Kubernetes allows typed anyOf branches only for int-or-string.
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": QUANTITY_MAX_LENGTH,
            **rules(rule(QUANTITY_RULE, QUANTITY_MESSAGE, reason="FieldValueInvalid")),
        }
    ),
]


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Its value reaches the pod only through env.valueFrom; the operator never reads it."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: str = Field("token", max_length=253, description="Key inside the Secret.")


class ObjectRef(ApiModel):
    """A reference to another llmops object in the same namespace."""

    name: ObjectName = Field(description="Name of the referenced object.")


class Toleration(ApiModel):
    """A core/v1 Toleration."""

    key: str | None = Field(None, max_length=253, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, max_length=253, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")


AnyObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class Scheduling(ApiModel):
    """Where the workload's pods may run."""

    node_selector: dict[str, Annotated[str, Field(max_length=253)]] | None = Field(
        None, max_length=32, description="Labels a node must carry (added to the GPU product selector)."
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=32, description="Extra tolerations; pods that request GPUs always tolerate the nvidia.com/gpu taint."
    )
    affinity: AnyObject | None = Field(None, description="A core/v1 Affinity, passed through to the pods unchanged.")
    priority_class_name: str | None = Field(None, max_length=253, description="PriorityClass of the pods.")
    queue_name: str | None = Field(
        None,
        max_length=63,
        description="Kueue LocalQueue. When set the Job is created suspended with the kueue.x-k8s.io/queue-name label and Kueue admits it.",
    )


class PodMetadata(ApiModel):
    """Labels and annotations added to the workload's pods (service meshes, cost allocation, scrape config)."""

    labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(None, max_length=64, description="Extra pod labels.")
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        None, max_length=64, description="Extra pod annotations."
    )


class ImageOverride(ApiModel):
    """Container image used instead of the operator's default for this workload."""

    image: str | None = Field(None, max_length=512, description="Full image reference of the runner.")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="Image pull policy.")


class Condition(ApiModel):
    """A status condition following the Kubernetes API conventions."""

    type: str = Field(description="Type of the condition, e.g. Ready, Succeeded, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="One CamelCase word for the last transition.")
    message: str = Field("", description="A sentence a person can act on.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, description="metadata.generation the condition was computed from.")


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
ServicePhase = Literal["Pending", "Loading", "Ready", "Degraded", "Failed"]


class CommonStatus(ApiModel):
    """Status fields shared by every kind."""

    observed_generation: int | None = Field(None, description="Last metadata.generation the operator acted on.")
    conditions: list[Condition] | None = Field(None, description="Current conditions.")
    message: str | None = Field(None, description="Human-readable summary of the current state.")
