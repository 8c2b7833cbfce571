"""FineTuneJob: fine-tune a base model on a dataset and write the result."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from .cel import DEFAULTED, IMMUTABLE, rule, rules
from .common import ApiModel, CommonStatus, ImageOverride, PodMetadata, OutputUri, Phase, Scheduling, SecretKeyRef, Uri
from .resources import JobResources

Method = Literal["full", "freeze", "lora", "qlora", "prompt-tuning", "auto"]
Precision = Literal["bf16", "fp16", "fp32"]


class BaseModelSource(ApiModel):
    """The model to start from."""

    uri: Uri = Field(description="Base model: hf://org/name, pvc://claim/path, s3://bucket/path or file:///path.")
    revision: str | None = Field(None, max_length=128, description="Branch, tag or commit of a hub model.")
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding a hub or object-store token; exposed to the pod as HF_TOKEN through env.valueFrom."
    )
    parameter_count: int | None = Field(
        None,
        ge=1,
        description="Number of model parameters. The VRAM pre-flight reads it from the model config when reachable; set it when not.",
        json_schema_extra={"format": "int64"},
    )


# The runner reads datasets only from files (runners/llmops_runners/data.py): an hf://
# dataset id would reach it as a path that does not exist, and fail the job only after
# its GPUs were allocated.
# resources.gpusPerNode 0: a CPU-only job (resources is defaulted, so the guards only keep CEL safe).
CPU_ONLY = "has(self.resources) && has(self.resources.gpusPerNode) && self.resources.gpusPerNode == 0"

NO_HUB_DATASET = rule(
    "!self.startsWith('hf://')",
    "hf:// datasets are not supported: the runner reads JSON or JSONL files; copy the data to a PVC and use pvc://",
    reason="FieldValueInvalid",
)


class Dataset(ApiModel):
    """Training data."""

    uri: Uri = Field(
        description="JSON or JSONL file, e.g. pvc://claim/train.jsonl or file:///data/train.jsonl; hf:// dataset ids are refused (the runner reads files only).",
        json_schema_extra=rules(NO_HUB_DATASET),
    )
    format: Literal["instruction", "chat", "text"] = Field(
        "instruction",
        description="instruction: alpaca-style records with instruction, input, output and optional system; chat: records with a messages list; text: records with a text field.",
    )
    validation_split: float = Field(0.05, ge=0.0, le=0.5, description="Fraction of the data held out for validation.")
    validation_uri: Uri | None = Field(
        None, description="Separate validation file; overrides validationSplit.", json_schema_extra=rules(NO_HUB_DATASET)
    )


class LoraConfig(ApiModel):
    """Low-rank adapters (used by lora and qlora)."""

    r: int = Field(16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(32, ge=1, le=4096, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, le=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, max_length=64, description="Module names to adapt; default chosen per architecture (e.g. attention and MLP projections)."
    )


class QLoraConfig(ApiModel):
    """4-bit quantized base for qlora (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base weights.")
    compute_dtype: Literal["bfloat16", "float16"] = Field("bfloat16", description="Dtype of the matmuls on dequantized weights.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves about 0.4 bit per parameter).")


class FreezeConfig(ApiModel):
    """Train only the top layers and the head."""

    trainable_layers: int = Field(2, ge=1, le=1024, description="Number of top transformer layers left trainable.")


class PromptTuningConfig(ApiModel):
    """Soft prompt tuning (peft)."""

    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="Length of the learned soft prompt.")
    init_text: str | None = Field(None, max_length=2048, description="Text whose embedding initialises the prompt; random when empty.")


class EarlyStopping(ApiModel):
    """Stop when the validation loss stops improving."""

    patience: int = Field(3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0.0, description="Minimum improvement that counts.")


class Training(ApiModel):
    """Optimisation hyper-parameters."""

    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the data; ignored when maxSteps is set.")
    max_steps: int | None = Field(None, ge=1, description="Total optimiser steps; overrides epochs.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    per_device_batch_size: int = Field(4, ge=1, le=4096, description="Sequences per process (one per GPU; one per node on CPU) per micro-step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-steps per optimiser step.")
    max_seq_length: int = Field(2048, ge=16, le=1048576, description="Sequences are truncated to this many tokens.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    # No schema default: bf16 on GPUs, but a CPU job (gpusPerNode 0) must not be refused
    # for a value it never asked for.
    precision: Precision | None = Field(
        None,
        description="Mixed-precision mode: bf16, fp16 or fp32. Unset: bf16 on GPUs, fp32 on CPU (resources.gpusPerNode 0, which allows only fp32).",
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass to save memory.")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps; default once per epoch.")
    early_stopping: EarlyStopping | None = Field(None, description="Stop early on a validation-loss plateau.")
    seed: int = Field(42, description="Random seed.")


class DeepSpeedConfig(ApiModel):
    """DeepSpeed ZeRO sharding; the runner generates the DeepSpeed JSON from it."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "!self.offloadParams || self.zeroStage == 3",
                "offloadParams needs zeroStage 3",
                field_path=".offloadParams",
                reason="FieldValueInvalid",
            ),
            rule(
                "!self.offloadOptimizer || self.zeroStage >= 1",
                "offloadOptimizer needs zeroStage 1, 2 or 3",
                field_path=".offloadOptimizer",
                reason="FieldValueInvalid",
            ),
        )
    )

    zero_stage: int = Field(0, ge=0, le=3, description="ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in host memory.")
    offload_params: bool = Field(False, description="Keep parameters in host memory (stage 3 only).")


class Checkpointing(ApiModel):
    """Periodic checkpoints and automatic resume."""

    every_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimiser steps.")
    keep_last: int = Field(2, ge=1, le=100, description="Checkpoints kept; older ones are deleted.")
    resume: bool = Field(True, description="A retried pod resumes from the newest checkpoint in the output location.")


class Output(ApiModel):
    """Where the trained model goes."""

    uri: OutputUri = Field(description="Destination of the adapter or model.")
    merge_lora: bool = Field(False, description="Also write the base model with the LoRA adapter merged in.")


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "!has(self.lora) || self.method in ['lora', 'qlora', 'auto']",
                "lora may only be set when method is lora, qlora or auto",
                field_path=".lora",
                reason="FieldValueForbidden",
            ),
            rule(
                "!has(self.qlora) || self.method in ['qlora', 'auto']",
                "qlora may only be set when method is qlora or auto",
                field_path=".qlora",
                reason="FieldValueForbidden",
            ),
            rule(
                "!has(self.freeze) || self.method == 'freeze'",
                "freeze may only be set when method is freeze",
                field_path=".freeze",
                reason="FieldValueForbidden",
            ),
            rule(
                "!has(self.promptTuning) || self.method == 'prompt-tuning'",
                "promptTuning may only be set when method is prompt-tuning",
                field_path=".promptTuning",
                reason="FieldValueForbidden",
            ),
            # A 4-bit bitsandbytes base cannot be partitioned by ZeRO-3; the runner refuses
            # the pair, but only once its pods hold their GPUs, so refuse it here instead.
            rule(
                "self.method != 'qlora' || !has(self.deepspeed) || self.deepspeed.zeroStage != 3",
                "method qlora cannot be sharded with deepspeed zeroStage 3: use zeroStage 0, 1 or 2, or method lora",
                field_path=".deepspeed.zeroStage",
                reason="FieldValueForbidden",
            ),
            # CPU jobs (resources.gpusPerNode 0). The runner would refuse these too, but only
            # once its pod runs; or, for offload, it would move host memory to host memory.
            rule(
                f"!({CPU_ONLY}) || self.method != 'qlora'",
                "method qlora needs a GPU (bitsandbytes 4-bit kernels run only on CUDA): with resources.gpusPerNode 0 "
                "use method lora, full, freeze, prompt-tuning or auto",
                field_path=".method",
                reason="FieldValueForbidden",
            ),
            rule(
                f"!({CPU_ONLY}) || !has(self.qlora)",
                "qlora settings need a GPU: with resources.gpusPerNode 0 no method uses them (auto picks lora on CPU)",
                field_path=".qlora",
                reason="FieldValueForbidden",
            ),
            rule(
                f"!({CPU_ONLY}) || !has(self.training) || !has(self.training.precision) || self.training.precision == 'fp32'",
                "precision bf16 and fp16 need a GPU: with resources.gpusPerNode 0 the runner trains in fp32; "
                "set precision fp32 or leave it unset",
                field_path=".training.precision",
                reason="FieldValueForbidden",
            ),
            rule(
                f"!({CPU_ONLY}) || !has(self.deepspeed) || !has(self.deepspeed.offloadOptimizer) || !self.deepspeed.offloadOptimizer",
                "offloadOptimizer moves optimizer states from GPU to host memory: with resources.gpusPerNode 0 they are "
                "in host memory already; remove it (ZeRO stages 1-3 still shard across CPU nodes)",
                field_path=".deepspeed.offloadOptimizer",
                reason="FieldValueForbidden",
            ),
            rule(
                f"!({CPU_ONLY}) || !has(self.deepspeed) || !has(self.deepspeed.offloadParams) || !self.deepspeed.offloadParams",
                "offloadParams moves parameters from GPU to host memory: with resources.gpusPerNode 0 they are "
                "in host memory already; remove it (ZeRO stage 3 still shards them across CPU nodes)",
                field_path=".deepspeed.offloadParams",
                reason="FieldValueForbidden",
            ),
        )
    )

    base_model: BaseModelSource = Field(description="The model to fine-tune.", json_schema_extra=IMMUTABLE)
    dataset: Dataset = Field(description="Training (and validation) data.", json_schema_extra=IMMUTABLE)
    method: Method = Field(
        "lora",
        description="full, freeze, lora, qlora, prompt-tuning, or auto (the operator picks full, lora or qlora from the VRAM estimate; lora on CPU, resources.gpusPerNode 0).",
        json_schema_extra=IMMUTABLE,
    )
    lora: LoraConfig | None = Field(None, description="LoRA settings (lora, qlora, auto).", json_schema_extra=IMMUTABLE)
    qlora: QLoraConfig | None = Field(None, description="QLoRA quantization settings.", json_schema_extra=IMMUTABLE)
    freeze: FreezeConfig | None = Field(None, description="Settings of method freeze.", json_schema_extra=IMMUTABLE)
    prompt_tuning: PromptTuningConfig | None = Field(
        None, description="Settings of method prompt-tuning.", json_schema_extra=IMMUTABLE
    )
    training: Training = Field(default_factory=Training, description="Hyper-parameters.", json_schema_extra={**IMMUTABLE, **DEFAULTED})
    deepspeed: DeepSpeedConfig | None = Field(
        None, description="DeepSpeed ZeRO settings (on CPU too, without offload).", json_schema_extra=IMMUTABLE
    )
    resources: JobResources = Field(
        default_factory=JobResources, description="Nodes, GPUs and host resources.", json_schema_extra={**IMMUTABLE, **DEFAULTED}
    )
    scheduling: Scheduling | None = Field(None, description="Node selection, tolerations, priority and Kueue queue.")
    output: Output = Field(description="Destination of the result.", json_schema_extra=IMMUTABLE)
    checkpointing: Checkpointing = Field(
        default_factory=Checkpointing, description="Checkpoints and automatic resume.", json_schema_extra={**IMMUTABLE, **DEFAULTED}
    )
    suspend: bool = Field(False, description="true creates no pods, and stops running ones; false (again) starts or resumes.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Wall-clock limit from start; past it the job fails with reason DeadlineExceeded."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of the whole pod group before the job fails.")
    image: ImageOverride | None = Field(None, description="Runner image override.", json_schema_extra=IMMUTABLE)
    pod_metadata: PodMetadata | None = Field(None, description="Labels and annotations added to the pods (applies to pods created after a change).")


class Progress(ApiModel):
    """Training progress read from the runner's metrics endpoint."""

    step: int | None = Field(None, description="Optimiser steps done.")
    total_steps: int | None = Field(None, description="Optimiser steps planned.")
    percent: str | None = Field(None, description="step / totalSteps as a percentage.")
    epoch: float | None = Field(None, description="Fractional epoch.")
    loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest validation loss.")
    learning_rate: float | None = Field(None, description="Current learning rate.")
    tokens_per_second: float | None = Field(None, description="Training throughput.")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h02m.")
    updated_at: datetime | None = Field(None, description="When the progress was read.")


class VramEstimate(ApiModel):
    """The operator's pre-flight estimate of memory per GPU."""

    method: str | None = Field(None, description="Method the estimate is for.")
    per_gpu_gib: float | None = Field(None, description="Estimated peak memory per GPU, GiB.")
    available_gib: float | None = Field(None, description="Memory of the requested GPU type, GiB.")
    breakdown: dict[str, float] | None = Field(None, description="weights, gradients, optimizer, activations, overhead (GiB).")


class FineTuneResult(ApiModel):
    """What the finished run reported."""

    artifact_uri: str | None = Field(None, description="Where the adapter or model was written.")
    metrics: dict[str, float] | None = Field(None, description="Final metrics (train_loss, eval_loss, ...).")


class FineTuneJobStatus(CommonStatus):
    """Observed state of a FineTuneJob."""

    phase: Phase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    selected_method: str | None = Field(None, description="Method in use (the one auto picked).")
    method_reason: str | None = Field(None, description="Why auto picked that method.")
    job_name: str | None = Field(None, description="Name of the batch/v1 Job.")
    gpus: int | None = Field(None, description="GPUs requested in total (0 for a CPU job).")
    restarts: int | None = Field(None, description="Pod-group restarts counted against backoffLimit.")
    attempt: int | None = Field(None, description="Index of the current pod group (restarts plus uncounted retries after disruptions).")
    start_time: datetime | None = Field(None, description="When the job first ran.")
    completion_time: datetime | None = Field(None, description="When it finished.")
    progress: Progress | None = Field(None, description="Live training progress.")
    vram_estimate: VramEstimate | None = Field(None, description="Pre-flight VRAM estimate; absent for a CPU job (resources.gpusPerNode 0).")
    result: FineTuneResult | None = Field(None, description="Result of a finished run.")
