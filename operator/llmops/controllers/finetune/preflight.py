"""The VRAM pre-flight of a FineTuneJob: before any pod exists, estimate the memory
per GPU, fail at once when the job cannot fit, and resolve `method: auto`.

A CPU job (resources.gpusPerNode 0) has no GPU memory to check: the pre-flight says
so in ResourcesFit (Unknown, CPUOnly), records no vramEstimate, and auto picks lora.
"""

from __future__ import annotations

from typing import Any

from ... import vram
from ...api.finetune import FineTuneJobSpec
from ...runtime import conditions as cond
from ...runtime.plan import StatusBuilder

WARNING_REASONS = {"InsufficientGPUMemory", "EstimateUnavailable", "UnsupportedPrecision"}
CPU_ONLY_REASON = "CPUOnly"  # not a warning: a CPU job is as asked, there is just no VRAM to check


def cpu_only(spec: FineTuneJobSpec) -> bool:
    """resources.gpusPerNode 0: the job trains on CPU, one process per node."""
    return spec.resources.gpus_per_node == 0


def precision(spec: FineTuneJobSpec) -> str:
    """The precision the runner is told: the spec's, else bf16 on GPUs and fp32 on CPU."""
    return spec.training.precision or ("fp32" if cpu_only(spec) else "bf16")


def preflight(model_config: dict[str, Any] | None, gpu_memory_mib: dict[str, int], spec: FineTuneJobSpec, status: StatusBuilder) -> str | None:
    """Check the GPU can run the job, estimate memory per GPU, fail early when it cannot fit,
    resolve method auto. Returns the method, or None when the job failed."""
    if cpu_only(spec):
        return _cpu_only(spec, status)
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


def _cpu_only(spec: FineTuneJobSpec, status: StatusBuilder) -> str:
    """No GPU memory to estimate. auto picks lora: qlora needs CUDA, and lora trains (and keeps
    optimizer states for) a fraction of a percent of the parameters that full would, in host memory."""
    method = spec.method if spec.method != "auto" else "lora"
    status.condition(
        cond.RESOURCES_FIT, "Unknown", CPU_ONLY_REASON,
        "VRAM pre-flight not applicable: resources.gpusPerNode is 0, so the job trains on CPU; "
        "host memory is not estimated (size it with resources.memory)",
    )
    status.new["selectedMethod"] = method
    if spec.method == "auto":
        status.new["methodReason"] = ("auto chose lora because resources.gpusPerNode is 0: on CPU qlora is impossible "
                                      "(4-bit bitsandbytes needs CUDA) and lora needs far less memory and time than full")
    return method


def training_plan(spec: FineTuneJobSpec, method: str) -> vram.TrainingPlan:
    ds = spec.deepspeed
    return vram.TrainingPlan(
        method=method,
        precision=precision(spec),
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
    if precision(spec) != "bf16" or not gpu or vram.supports_bf16(gpu) is not False:
        return True  # an unknown product, or no type asked for: the runner checks on the node
    asked = "bf16" if spec.training.precision else "unset, so bf16 (the default on GPUs),"
    message = (f"spec.training.precision {asked} needs an Ampere or newer GPU (compute capability 8.0); "
               f"{gpu} has none: use precision fp16 (or fp32), or a gpuType with bf16")
    status.condition(cond.RESOURCES_FIT, False, "UnsupportedPrecision", message)
    status.fail("UnsupportedPrecision", message)
    return False
