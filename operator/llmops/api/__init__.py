"""The llmops.dev/v1alpha1 API: one entry per kind, used by the CRD generator and the operator."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from .common import API_VERSION, GROUP, VERSION
from .compression import CompressionJobSpec, CompressionJobStatus
from .finetune import FineTuneJobSpec, FineTuneJobStatus
from .inference import InferenceServiceSpec, InferenceServiceStatus

CATEGORY = "llmops"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...] = field(default=())


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

FINETUNE = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    singular="finetunejob",
    # KServe owns isvc/llmisvc, Kubeflow tfjob/pytorchjob/trainjob...: ours start with ft/cp/lis.
    short_names=("ftj",),
    description="FineTuneJob fine-tunes a base model (full, freeze, LoRA, QLoRA, prompt tuning) on GPU nodes, or on CPU nodes with resources.gpusPerNode 0.",
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    columns=(
        PrinterColumn("Phase", ".status.phase", description="Lifecycle phase."),
        PrinterColumn("Method", ".spec.method", description="Fine-tuning method asked for."),
        PrinterColumn("Nodes", ".spec.resources.nodes", "integer", "Nodes."),
        PrinterColumn("GPUs", ".spec.resources.gpusPerNode", "integer", "GPUs per node."),
        PrinterColumn("Progress", ".status.progress.percent", description="Steps done."),
        PrinterColumn("Loss", ".status.progress.loss", "number", "Latest training loss.", priority=1),
        PrinterColumn("ETA", ".status.progress.eta", description="Estimated time left.", priority=1),
        AGE,
    ),
)

COMPRESSION = Kind(
    kind="CompressionJob",
    plural="compressionjobs",
    singular="compressionjob",
    short_names=("cpj",),
    description="CompressionJob quantizes, prunes, distills or merges a model in ordered stages.",
    spec=CompressionJobSpec,
    status=CompressionJobStatus,
    columns=(
        PrinterColumn("Phase", ".status.phase", description="Lifecycle phase."),
        PrinterColumn("Stages", ".status.progress", description="Stages done / total."),
        PrinterColumn("Size ratio", ".status.metrics.sizeRatio", "number", "Output size / input size (weights on disk)."),
        PrinterColumn("Quality drop", ".status.metrics.qualityDrop", "number", "Relative loss of quality measured by the gate."),
        PrinterColumn("GPUs", ".status.gpus", "integer", "GPUs of the pod.", priority=1),
        PrinterColumn("Artifact", ".status.artifactUri", description="Output location.", priority=1),
        AGE,
    ),
)

INFERENCE = Kind(
    kind="InferenceService",
    plural="inferenceservices",
    singular="inferenceservice",
    short_names=("lis",),
    description="InferenceService serves a model and its LoRA adapters with vLLM (or transformers on CPU).",
    spec=InferenceServiceSpec,
    status=InferenceServiceStatus,
    columns=(
        PrinterColumn("Phase", ".status.phase", description="Serving phase."),
        PrinterColumn("URL", ".status.url", description="In-cluster OpenAI-compatible endpoint."),
        PrinterColumn("Ready", ".status.readyReplicas", "integer", "Replicas serving."),
        PrinterColumn("Replicas", ".status.replicas", "integer", "Replicas wanted."),
        PrinterColumn("Model", ".status.servedModelName", description="Model name clients send."),
        PrinterColumn("Engine", ".spec.engine", description="Serving engine.", priority=1),
        PrinterColumn("GPUs", ".spec.resources.gpus", "integer", "GPUs per replica.", priority=1),
        AGE,
    ),
)

KINDS: tuple[Kind, ...] = (FINETUNE, COMPRESSION, INFERENCE)

__all__ = ["API_VERSION", "GROUP", "VERSION", "CATEGORY", "KINDS", "Kind", "PrinterColumn", "FINETUNE", "COMPRESSION", "INFERENCE"]
