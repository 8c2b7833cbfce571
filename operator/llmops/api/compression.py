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

    uri: Uri | None = Field(None, description="Model location: a model folder, or a PEFT adapter folder (then start with a mergeLora stage).")
    fine_tune_job: ObjectRef | None = Field(
        None, description="A FineTuneJob whose output is the input model; waits for it to succeed (its adapter's base is its spec.baseModel)."
    )
    base_model_uri: Uri | None = Field(
        None, description="Base model of an adapter given by uri; default: the base the adapter's own config names."
    )
    revision: str | None = Field(None, max_length=128, description="Hub revision.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="Secret with a hub or object-store token.")


class Calibration(ApiModel):
    """Samples used by quantization methods that calibrate activations."""

    dataset_uri: Uri = Field(description="JSON/JSONL calibration data.")
    samples: int = Field(128, ge=1, le=100000, description="Number of calibration samples.")


ONNX_METHODS = ("onnx-dynamic-int8",)
LLM_COMPRESSOR_METHODS = ("w8a8-int8", "w4a16", "fp8", "gptq", "awq")
CALIBRATED_METHODS = ("w8a8-int8", "w4a16", "gptq", "awq")


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


class QuantizeStage(ApiModel):
    """Quantize weights (and activations)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                f"!(self.method in {_cel_list(CALIBRATED_METHODS)}) || has(self.calibration)",
                "w8a8-int8, w4a16, gptq and awq calibrate on data: set calibration.datasetUri",
                field_path=".calibration",
                reason="FieldValueRequired",
            )
        )
    )

    method: Literal["onnx-dynamic-int8", "w8a8-int8", "w4a16", "fp8", "gptq", "awq"] = Field(
        description="onnx-dynamic-int8 (ONNX Runtime, CPU), w8a8-int8, w4a16, fp8 (llm-compressor, vLLM-loadable), gptq, awq."
    )
    calibration: Calibration | None = Field(None, description="Calibration data for methods that need it.")
    ignore: list[str] | None = Field(None, max_length=64, description="Module names left unquantized (lm_head by default).")


class Recovery(ApiModel):
    """Fine-tuning that wins back quality after pruning."""

    dataset_uri: Uri = Field(description="Training data (the fine-tuning formats, or {text, label} for classifiers).")
    steps: int = Field(50, ge=1, le=100000, description="Optimizer steps per round.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Learning rate.")


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

    method: Literal["magnitude", "2:4", "attention-heads", "channels"] = Field(
        description=(
            "magnitude (unstructured, saved dense), 2:4 (semi-structured, saved dense), attention-heads or channels "
            "(structured: heads or MLP channels removed, tensors shrink and the config is rewritten)."
        )
    )
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Fraction of weights (magnitude, 2:4), heads or MLP channels removed.")
    iterations: int = Field(1, ge=1, le=20, description="Prune a little, recover, repeat: the target is reached in this many rounds.")
    recovery: Recovery | None = Field(None, description="A short fine-tune after each round, pruned weights held at zero.")


class StudentShape(ApiModel):
    """A student derived from the teacher's config, initialised from the teacher's weights where shapes allow."""

    num_layers: int | None = Field(None, ge=1, le=512, description="Layers; default half the teacher's.")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size; default the teacher's.")
    intermediate_size: int | None = Field(None, ge=1, description="MLP size; default the teacher's, scaled with hiddenSize.")


class DistillStage(ApiModel):
    """Train a smaller student on the teacher's outputs (the stage's input is the teacher)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "(has(self.studentModel) ? 1 : 0) + (has(self.studentConfig) ? 1 : 0) + (has(self.studentFromTeacher) ? 1 : 0) <= 1",
                "set at most one of studentModel, studentConfig and studentFromTeacher (none: half the teacher's layers)",
                reason="FieldValueInvalid",
            )
        )
    )

    student_model: Uri | None = Field(None, description="Initial student model.")
    student_config: AnyObject | None = Field(None, description="transformers config of a student built from scratch.")
    student_from_teacher: StudentShape | None = Field(None, description="A student derived from the teacher (the default).")
    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature of the distillation loss.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation loss against the hard-label loss.")
    dataset_uri: Uri = Field(description="Distillation data.")
    max_steps: int = Field(1000, ge=1, description="Training steps of the student.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Learning rate of the student.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per step.")


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
    samples: int = Field(256, ge=1, le=100000, description="Records evaluated (the first N of the file).")


class CompressionOutput(ApiModel):
    """Where the compressed model goes."""

    uri: OutputUri = Field(description="Destination of the compressed model.")


class CompressionResources(WorkerResources):
    """GPUs and host resources of the compression pod."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "!has(self.gpuType) || !has(self.gpus) || self.gpus > 0",
                "gpuType needs gpus 1 or more (gpus 0 runs on CPU)",
                field_path=".gpuType",
                reason="FieldValueForbidden",
            )
        )
    )

    gpus: int | None = Field(  # type: ignore[assignment]
        None,
        ge=0,
        le=16,
        description=(
            "GPUs of the pod (nvidia.com/gpu requests = limits). Unset: 1 when a stage quantizes with llm-compressor "
            "(w8a8-int8, w4a16, fp8, gptq, awq: calibration runs the model), else 0 (merge, prune, distill and ONNX INT8 run on CPU)."
        ),
    )


class CompressionJobSpec(ApiModel):
    """Desired state of a CompressionJob."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.stages.all(s, !has(s.quantize)) || "
                "(has(self.stages[size(self.stages) - 1].quantize) && self.stages.filter(s, has(s.quantize)).size() == 1)",
                "quantize must be the last stage, and there can be only one: its output is not a model the other stages can train",
                field_path=".stages",
                reason="FieldValueInvalid",
            ),
            rule(
                "self.stages.filter(s, has(s.mergeLora)).size() == 0 || (has(self.stages[0].mergeLora) && self.stages.filter(s, has(s.mergeLora)).size() == 1)",
                "mergeLora must be the first stage, and there can be only one",
                field_path=".stages",
                reason="FieldValueInvalid",
            ),
        )
    )

    model: CompressionModelSource = Field(description="Input model.", json_schema_extra=IMMUTABLE)
    stages: list[Stage] = Field(min_length=1, max_length=16, description="Stages, run in order.", json_schema_extra=IMMUTABLE)
    evaluation: Evaluation | None = Field(None, description="Quality gate.", json_schema_extra=IMMUTABLE)
    output: CompressionOutput = Field(description="Destination.", json_schema_extra=IMMUTABLE)
    resources: CompressionResources = Field(
        default_factory=CompressionResources, description="GPUs and host resources.", json_schema_extra={**IMMUTABLE, **DEFAULTED}
    )
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


class QualityGateStatus(ApiModel):
    """The quality gate's verdict: the chain's input and output measured on the evaluation set."""

    metric: str = Field(description="perplexity, accuracy or exact-match.")
    before: float = Field(description="Quality of the input model (after mergeLora for an adapter).")
    after: float = Field(description="Quality of the compressed model.")
    drop: float = Field(description="Relative loss of quality (positive = worse).")
    max_drop: float = Field(description="spec.evaluation.maxAccuracyDrop.")
    passed: bool = Field(description="false: the job failed with QualityGateFailed and nothing may serve its output.")
    greedy_agreement: float | None = Field(None, description="Fraction of evaluation prompts on which both models' greedy replies are equal.")


class CompressionJobStatus(CommonStatus):
    """Observed state of a CompressionJob."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    job_name: str | None = Field(None, description="Name of the batch/v1 Job.")
    restarts: int | None = Field(None, description="Pod restarts counted against backoffLimit.")
    attempt: int | None = Field(None, description="Index of the current attempt (restarts plus uncounted retries after disruptions).")
    input_uri: str | None = Field(None, description="Resolved input model location (kept once resolved).")
    input_base_uri: str | None = Field(None, description="Base model of an adapter input, when it came from the FineTuneJob.")
    stages: list[StageStatus] | None = Field(None, description="Per-stage results.")
    progress: str | None = Field(None, description="Stages done / total.")
    start_time: datetime | None = Field(None, description="When the job first ran.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    artifact_uri: str | None = Field(None, description="Where the compressed model was written.")
    metrics: dict[str, float] | None = Field(None, description="Size before/after, compression ratio, quality before/after.")
    quality_gate: QualityGateStatus | None = Field(None, description="The quality gate's verdict, when spec.evaluation is set.")
    image: str | None = Field(None, description="The runner image the chain needs (ONNX and llm-compressor stages live in different images).")
    gpus: int | None = Field(None, description="GPUs the pod requests (spec.resources.gpus, or what the stages need).")
    input_job: str | None = Field(None, description="The FineTuneJob whose output is the input, when spec.model.fineTuneJob is set.")
