"""The fine-tuning runner's config contract (see docs/runner-contract.md), validated with pydantic.

Keys are camelCase to match the FineTuneJob spec the operator copies them from. Every optional
block may be absent or null and then takes its defaults. Validation failures become a
`BadInputError` whose text is one sentence naming the offending field.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import BadInputError

METHODS = ("full", "freeze", "lora", "qlora", "prompt-tuning")


class _Block(BaseModel):
    # Unknown keys are rejected: a typo in a spec field should fail loudly, not be ignored.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ModelSource(_Block):
    path: str = Field(min_length=1)
    revision: str | None = None
    token_env: str | None = "HF_TOKEN"


class DatasetSource(_Block):
    path: str = Field(min_length=1)
    format: Literal["instruction", "chat", "text"] | None = None  # None: detected from the records
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    validation_path: str | None = None


class LoraSettings(_Block):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None: a default per architecture


class QloraSettings(_Block):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True


class FreezeSettings(_Block):
    trainable_layers: int = Field(2, ge=0)


class PromptTuningSettings(_Block):
    num_virtual_tokens: int = Field(20, gt=0)
    init_text: str | None = None


class EarlyStopping(_Block):
    patience: int = Field(3, gt=0)
    threshold: float = Field(0.0, ge=0.0)


class TrainingSettings(_Block):
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_seq_length: int = Field(2048, gt=1)
    max_grad_norm: float = Field(1.0, ge=0.0)
    precision: Literal["bf16", "fp16", "fp32"] | None = None  # None: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    eval_steps: int | None = Field(None, gt=0)
    seed: int = 42
    early_stopping: EarlyStopping | None = None
    logging_steps: int = Field(10, gt=0)


class DeepSpeedSettings(_Block):
    zero_stage: int = Field(0, ge=0, le=3)
    offload_optimizer: bool = False
    offload_params: bool = False


class Checkpointing(_Block):
    every_steps: int = Field(500, gt=0)
    keep_last: int = Field(2, gt=0)
    resume: bool = True


class OutputSettings(_Block):
    path: str = Field(min_length=1)
    merge_lora: bool = False


class MetricsSettings(_Block):
    port: int | None = Field(9400, ge=0, le=65535)  # None or 0: no endpoint


class RunnerConfig(_Block):
    job_name: str = "finetune"
    namespace: str = "default"
    model: ModelSource
    dataset: DatasetSource
    method: str
    lora: LoraSettings | None = None
    qlora: QloraSettings | None = None
    freeze: FreezeSettings | None = None
    prompt_tuning: PromptTuningSettings | None = None
    training: TrainingSettings | None = None
    deepspeed: DeepSpeedSettings | None = None
    checkpointing: Checkpointing | None = None
    output: OutputSettings
    metrics: MetricsSettings | None = None
    termination_message_path: str = "/dev/termination-log"

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; expected one of {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> "RunnerConfig":
        # Absent blocks get their defaults here so the rest of the runner never checks for None.
        self.lora = self.lora or LoraSettings()
        self.qlora = self.qlora or QloraSettings()
        self.freeze = self.freeze or FreezeSettings()
        self.prompt_tuning = self.prompt_tuning or PromptTuningSettings()
        self.training = self.training or TrainingSettings()
        self.checkpointing = self.checkpointing or Checkpointing()
        self.metrics = self.metrics or MetricsSettings()
        # deepspeed stays None when absent: its presence is what turns DeepSpeed on.
        ds = self.deepspeed
        if ds and ds.offload_params and ds.zero_stage != 3:
            raise ValueError("deepspeed.offloadParams needs zeroStage 3")
        if ds and ds.offload_optimizer and ds.zero_stage == 0:
            raise ValueError("deepspeed.offloadOptimizer needs zeroStage 1, 2 or 3")
        if self.method == "qlora" and ds and ds.zero_stage == 3:
            raise ValueError("method 'qlora' cannot be sharded with deepspeed zeroStage 3")
        return self

    @property
    def uses_peft(self) -> bool:
        return self.method in ("lora", "qlora", "prompt-tuning")


def _one_sentence(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(to_camel(str(p)) if isinstance(p, str) else str(p) for p in first["loc"])
    kind, text = first["type"], first["msg"]
    if kind == "missing":
        return f"Invalid config: required field {where!r} is missing."
    if kind == "extra_forbidden":
        return f"Invalid config: unknown field {where!r}."
    text = text.removeprefix("Value error, ")
    return f"Invalid config at {where!r}: {text}." if where else f"Invalid config: {text}."


def parse_config(data: dict, schema: type[BaseModel] = RunnerConfig):
    """`data` validated against `schema` (the fine-tuning contract unless another runner's is given)."""
    if not isinstance(data, dict):
        raise BadInputError("Invalid config: the top level must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise BadInputError(_one_sentence(error)) from None


def load_config(path: str | os.PathLike | None, schema: type[BaseModel] = RunnerConfig):
    """Read the config from `path` (or $LLMOPS_CONFIG when `path` is None) and validate it against `schema`."""
    path = path or os.environ.get("LLMOPS_CONFIG")
    if not path:
        raise BadInputError("No config given: pass --config FILE or set LLMOPS_CONFIG.")
    file = Path(path)
    if not file.is_file():
        raise BadInputError(f"Config file {str(file)!r} does not exist.")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise BadInputError(f"Config file {str(file)!r} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    return parse_config(data, schema)


def termination_path_from_raw(path: str | os.PathLike | None) -> str:
    """Best-effort termination path for a config that failed validation, so the failure is still reported."""
    default = "/dev/termination-log"
    try:
        data = json.loads(Path(path or os.environ.get("LLMOPS_CONFIG", "")).read_text())
        return str(data.get("terminationMessagePath") or default)
    except Exception:
        return default
