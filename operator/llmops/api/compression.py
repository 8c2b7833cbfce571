"""CompressionJob: quantize, prune, distill or merge a model, in ordered stages."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from .cel import DEFAULTED, IMMUTABLE, exactly_one, rule, rules
from .common import AnyObject, ApiModel, CommonStatus, ImageOverride, PodMetadata, ObjectRef, OutputUri, Phase, Scheduling, SecretKeyRef, Uri
from .resources import WorkerResources


class CompressionModelSource(ApiModel):
    """The model to compress: a location, or the output of a FineTuneJob."""

    model_config = ConfigDict(json_schema_extra=rules(exactly_one(["uri", "fineTuneJob"], "the model source")))

    uri: Uri | None = Field(None, description="Model location.")
    fine_tune_job: ObjectRef | None = Field(None, description="A FineTuneJob whose output is the input model; waits for it to succeed.")
    revision: str | None = Field(None, max_length=128, description="Hub revision.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="Secret with a hub or object-store token.")


class Calibration(ApiModel):
    """Samples used by quantization methods that calibrate activations."""

    dataset_uri: Uri = Field(description="JSON/JSONL calibration data.")
    samples: int = Field(128, ge=1, le=100000, description="Number of calibration samples.")


class QuantizeStage(ApiModel):
    """Quantize weights (and activations)."""

    method: Literal["onnx-dynamic-int8", "w8a8-int8", "w4a16", "fp8", "gptq", "awq"] = Field(
        description="onnx-dynamic-int8 (ONNX Runtime, CPU), w8a8-int8, w4a16, fp8 (llm-compressor, vLLM-loadable), gptq, awq."
    )
    calibration: Calibration | None = Field(None, description="Calibration data for methods that need it.")
    ignore: list[str] | None = Field(None, max_length=64, description="Module names left unquantized (lm_head by default).")


class PruneStage(ApiModel):
    """Remove weights."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.method != '2:4' || self.sparsity == 0.5",
                "2:4 structured sparsity is exactly 0.5",
                field_path=".sparsity",
                reason="FieldValueInvalid",
            )
        )
    )

    method: Literal["magnitude", "attention-heads", "2:4"] = Field(
        description="magnitude (unstructured), attention-heads (structured, by head importance) or 2:4 (semi-structured)."
    )
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Fraction of weights (or heads) removed.")


class DistillStage(ApiModel):
    """Train a smaller student on the teacher's outputs."""

    model_config = ConfigDict(json_schema_extra=rules(exactly_one(["studentModel", "studentConfig"], "the student")))

    student_model: Uri | None = Field(None, description="Initial student model.")
    student_config: AnyObject | None = Field(None, description="transformers config of a student built from scratch.")
    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature of the distillation loss.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation loss against the hard-label loss.")
    dataset_uri: Uri = Field(description="Distillation data.")
    max_steps: int = Field(1000, ge=1, description="Training steps of the student.")


class MergeLoraStage(ApiModel):
    """Merge a LoRA adapter into its base model."""

    adapter_uri: Uri | None = Field(None, description="Adapter to merge; default: the adapter that is the input model.")


class Stage(ApiModel):
    """One compression step; exactly one of its fields is set."""

    model_config = ConfigDict(
        json_schema_extra=rules(exactly_one(["quantize", "prune", "distill", "mergeLora"], "a stage"))
    )

    name: str | None = Field(None, max_length=63, description="Name shown in status; default: the stage type and index.")
    quantize: QuantizeStage | None = Field(None, description="Quantization.")
    prune: PruneStage | None = Field(None, description="Pruning.")
    distill: DistillStage | None = Field(None, description="Distillation.")
    merge_lora: MergeLoraStage | None = Field(None, description="LoRA merge.")


class Evaluation(ApiModel):
    """Quality gate run after the last stage."""

    dataset_uri: Uri = Field(description="Evaluation data.")
    metric: Literal["perplexity", "accuracy", "exact-match"] = Field("perplexity", description="Metric compared with the input model.")
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Largest relative loss of quality accepted; beyond it the job fails with reason QualityGateFailed."
    )


class CompressionOutput(ApiModel):
    """Where the compressed model goes."""

    uri: OutputUri = Field(description="Destination of the compressed model.")


class CompressionJobSpec(ApiModel):
    """Desired state of a CompressionJob."""

    model: CompressionModelSource = Field(description="Input model.", json_schema_extra=IMMUTABLE)
    stages: list[Stage] = Field(min_length=1, max_length=16, description="Stages, run in order.", json_schema_extra=IMMUTABLE)
    evaluation: Evaluation | None = Field(None, description="Quality gate.", json_schema_extra=IMMUTABLE)
    output: CompressionOutput = Field(description="Destination.", json_schema_extra=IMMUTABLE)
    resources: WorkerResources = Field(default_factory=WorkerResources, description="GPUs and host resources.", json_schema_extra={**IMMUTABLE, **DEFAULTED})
    scheduling: Scheduling | None = Field(None, description="Node selection, tolerations, priority and Kueue queue.")
    suspend: bool = Field(False, description="true creates no pods; false starts them.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit; past it the job fails with DeadlineExceeded.")
    backoff_limit: int = Field(2, ge=0, le=100, description="Retries before the job fails.")
    image: ImageOverride | None = Field(None, description="Runner image override.", json_schema_extra=IMMUTABLE)
    pod_metadata: PodMetadata | None = Field(None, description="Labels and annotations added to the pods (applies to pods created after a change).")


class StageStatus(ApiModel):
    """Outcome of one stage."""

    name: str = Field(description="Stage name.")
    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    metrics: dict[str, float] | None = Field(None, description="Size, sparsity, duration, ...")


class CompressionJobStatus(CommonStatus):
    """Observed state of a CompressionJob."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    job_name: str | None = Field(None, description="Name of the batch/v1 Job.")
    input_uri: str | None = Field(None, description="Resolved input model location.")
    stages: list[StageStatus] | None = Field(None, description="Per-stage results.")
    progress: str | None = Field(None, description="Stages done / total.")
    start_time: datetime | None = Field(None, description="When the job first ran.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    artifact_uri: str | None = Field(None, description="Where the compressed model was written.")
    metrics: dict[str, float] | None = Field(None, description="Size before/after, compression ratio, quality before/after.")
