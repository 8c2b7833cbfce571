"""The VRAM pre-flight of a FineTuneJob: before any pod exists, estimate the memory
per GPU, fail at once when the job cannot fit, and resolve `method: auto`.
"""

from __future__ import annotations

from typing import Any

from ... import vram
from ...api.finetune import FineTuneJobSpec
from ...runtime import conditions as cond
from ...runtime.plan import StatusBuilder

WARNING_REASONS = {"InsufficientGPUMemory", "EstimateUnavailable", "UnsupportedPrecision"}


def preflight(model_config: dict[str, Any] | None, gpu_memory_mib: dict[str, int], spec: FineTuneJobSpec, status: StatusBuilder) -> str | None:
    """Check the GPU can run the job, estimate memory per GPU, fail early when it cannot fit,
    resolve method auto. Returns the method, or None when the job failed."""
    if not _precision_supported(spec, status):
        return None
    shape = None
    if model_config:
        try:
            shape = vram.shape_from_config(model_config)
        except ValueError:
            shape = None
    if shape is None and spec.base_model.parameter_count:
        shape = vram.ModelShape(parameters=spec.base_model.parameter_count)
    res = spec.resources
    gpu_label = res.gpu_type
    available = vram.gpu_memory_gib(gpu_label, gpu_memory_mib.get(gpu_label or "")) if gpu_label else None
    if available is None and gpu_memory_mib and not gpu_label:
        # No type asked for: the pods may land on any GPU node, so plan for the smallest.
        smallest = min(gpu_memory_mib.values())
        available, gpu_label = smallest / 1024, "the smallest GPU in the cluster"
    if shape is None or available is None:
        method = spec.method if spec.method != "auto" else "lora"
        why = "model size unknown (set spec.baseModel.parameterCount)" if shape is None else "GPU memory unknown (set spec.resources.gpuType)"
        status.condition(cond.RESOURCES_FIT, "Unknown", "EstimateUnavailable", f"VRAM pre-flight skipped: {why}")
        status.new["selectedMethod"] = method
        if spec.method == "auto":
            status.new["methodReason"] = f"auto chose lora, the safe default, because the {why}"
        return method
    template = training_plan(spec, spec.method if spec.method != "auto" else "full")
    if spec.method == "auto":
        method, estimate, reason = vram.choose_method(shape, template, available)
        status.new["methodReason"] = reason
    else:
        method, estimate = spec.method, vram.estimate(shape, template)
    status.new["vramEstimate"] = {
        "method": method,
        "perGpuGib": round(estimate.total_gib, 1),
        "availableGib": round(available, 1),
        "breakdown": estimate.breakdown(),
    }
    if not estimate.fits(available):
        message = vram.insufficient_message(estimate, available, gpu_label, template.zero_stage)
        status.condition(cond.RESOURCES_FIT, False, "InsufficientGPUMemory", message)
        status.fail("InsufficientGPUMemory", message)
        return None
    status.condition(
        cond.RESOURCES_FIT, True, "EstimateFits",
        f"{method} needs about {estimate.total_gib:.1f} GiB per GPU of the {available:.1f} GiB available",
    )
    status.new["selectedMethod"] = method
    return method


def training_plan(spec: FineTuneJobSpec, method: str) -> vram.TrainingPlan:
    ds = spec.deepspeed
    return vram.TrainingPlan(
        method=method,
        precision=spec.training.precision,
        per_device_batch_size=spec.training.per_device_batch_size,
        max_seq_length=spec.training.max_seq_length,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        zero_stage=ds.zero_stage if ds else 0,
        offload_optimizer=bool(ds and ds.offload_optimizer),
        offload_params=bool(ds and ds.offload_params),
        world_size=spec.resources.nodes * spec.resources.gpus_per_node,
        lora_r=spec.lora.r if spec.lora else 16,
        trainable_layers=spec.freeze.trainable_layers if spec.freeze else 2,
        num_virtual_tokens=spec.prompt_tuning.num_virtual_tokens if spec.prompt_tuning else 20,
    )


def _precision_supported(spec: FineTuneJobSpec, status: StatusBuilder) -> bool:
    """bf16 needs compute capability 8.0 (Ampere) or newer; the runner would only find out on the GPU."""
    gpu = spec.resources.gpu_type
    if spec.training.precision != "bf16" or not gpu or vram.supports_bf16(gpu) is not False:
        return True  # an unknown product, or no type asked for: the runner checks on the node
    message = (f"spec.training.precision bf16 needs an Ampere or newer GPU (compute capability 8.0); "
               f"{gpu} has none: use precision fp16 (or fp32), or a gpuType with bf16")
    status.condition(cond.RESOURCES_FIT, False, "UnsupportedPrecision", message)
    status.fail("UnsupportedPrecision", message)
    return False
