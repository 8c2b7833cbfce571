"""The compression runner's config contract (docs/runner-contract.md), validated with pydantic.

The stage blocks mirror the CompressionJob spec's stages, with every URI already resolved by the
operator to a path inside the pod. Unknown keys are rejected, as in the fine-tuning contract.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import MetricsSettings, _Block

TASKS = ("causal-lm", "sequence-classification")
ONNX_METHODS = ("onnx-dynamic-int8",)
LLMC_METHODS = ("w8a8-int8", "w4a16", "fp8", "gptq", "awq")


class ModelInput(_Block):
    path: str = Field(min_length=1)  # a model folder, or a PEFT adapter folder
    base_path: str | None = None  # an adapter's base; None: the adapter's own config names it
    revision: str | None = None
    token_env: str | None = None


class MergeLoraSettings(_Block):
    adapter_path: str | None = None  # None: the stage's input is the adapter


class Recovery(_Block):
    """A short fine-tune after pruning, masks held, to win back quality."""

    dataset_path: str = Field(min_length=1)
    steps: int = Field(50, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, gt=0)


class PruneSettings(_Block):
    method: Literal["magnitude", "2:4", "attention-heads", "channels"]
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)  # of weights (magnitude, 2:4), heads or MLP channels
    iterations: int = Field(1, ge=1, le=20)  # prune a little, recover, repeat
    recovery: Recovery | None = None


class StudentShape(_Block):
    """A student derived from the teacher's config, initialised from the teacher where shapes allow."""

    num_layers: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)


class DistillSettings(_Block):
    student_path: str | None = None
    student_config: dict | None = None
    student_from_teacher: StudentShape | None = None
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the KL term against the task loss
    dataset_path: str = Field(min_length=1)
    max_steps: int = Field(1000, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(16, gt=0)

    @model_validator(mode="after")
    def _one_student(self) -> "DistillSettings":
        given = [k for k in ("student_path", "student_config", "student_from_teacher") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError("give one of studentPath, studentConfig and studentFromTeacher")
        if not given:
            self.student_from_teacher = StudentShape()
        return self


class Calibration(_Block):
    path: str = Field(min_length=1)
    samples: int = Field(128, gt=0)


class QuantizeSettings(_Block):
    method: Literal["onnx-dynamic-int8", "w8a8-int8", "w4a16", "fp8", "gptq", "awq"]
    calibration: Calibration | None = None
    ignore: list[str] | None = None  # module names left unquantized; None: lm_head / the classifier


class StageConfig(_Block):
    name: str | None = None  # None: "<type>-<index>"
    merge_lora: MergeLoraSettings | None = None
    prune: PruneSettings | None = None
    distill: DistillSettings | None = None
    quantize: QuantizeSettings | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "StageConfig":
        given = [k for k in ("merge_lora", "prune", "distill", "quantize") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a stage sets exactly one of mergeLora, prune, distill and quantize")
        return self

    @property
    def type(self) -> str:
        return next(k for k in ("merge_lora", "prune", "distill", "quantize") if getattr(self, k) is not None)

    @property
    def settings(self):
        return getattr(self, self.type)


class Evaluation(_Block):
    path: str = Field(min_length=1)
    metric: Literal["perplexity", "accuracy", "exact-match"] = "perplexity"
    max_accuracy_drop: float = Field(0.02, ge=0.0, le=1.0)  # relative
    samples: int = Field(256, gt=0)  # records evaluated (the first N)


class CompressOutput(_Block):
    path: str = Field(min_length=1)


class CompressConfig(_Block):
    job_name: str = "compress"
    namespace: str = "default"
    model: ModelInput
    stages: list[StageConfig] = Field(min_length=1)
    evaluation: Evaluation | None = None
    output: CompressOutput
    max_seq_length: int = Field(256, gt=1)
    seed: int = 42
    metrics: MetricsSettings | None = None
    termination_message_path: str = "/dev/termination-log"

    @model_validator(mode="after")
    def _defaults(self) -> "CompressConfig":
        self.metrics = self.metrics or MetricsSettings()
        for i, stage in enumerate(self.stages):
            stage.name = stage.name or f"{stage.type.replace('_', '-')}-{i}"
        return self
