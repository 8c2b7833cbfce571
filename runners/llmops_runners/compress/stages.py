"""The stage interface, the registry of stage implementations, and the checks made before any runs.

A stage is a function `run(settings, model, ctx) -> StageOutcome`: it reads `model` (a folder),
writes its result into `ctx.out` and says what it wrote. The pipeline measures every stage's
input and output itself (size, parameters, sparsity, quality, latency), so a stage reports only
what is its own (heads removed, distillation loss, ...).

Everything that can be known before the first stage runs is checked first: a chain that would
fail in its third stage after an hour of distillation fails in its first second instead.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInputError
from .config import LLMC_METHODS, ONNX_METHODS, CompressConfig, StageConfig
from .models import ModelRef

# The image each optional library ships in (images/compress*.Dockerfile): named in the error
# when a stage needs a library this image does not have.
IMAGE_OF_LIBRARY = {
    "llmcompressor": "runner-compress (llm-compressor, compressed-tensors)",
    "optimum.onnxruntime": "runner-compress-onnx (optimum-onnx, ONNX Runtime)",
    "torch_pruning": "runner-compress or runner-compress-onnx (torch-pruning)",
}
CALIBRATED = {"w8a8-int8", "w4a16", "gptq", "awq"}  # fp8 is dynamic; onnx-dynamic-int8 calibrates nothing


@dataclass
class StageContext:
    config: CompressConfig
    index: int
    name: str
    out: Path  # an empty folder for this stage's model
    progress: Callable[[int, int], None] = lambda step, total: None  # (step, total) for the metrics endpoint


@dataclass
class StageOutcome:
    model: ModelRef
    metrics: dict[str, float] = field(default_factory=dict)


def implementation(stage: StageConfig) -> Callable:
    """The `run` function of a stage: its module is imported only when the stage runs."""
    module = {
        "merge_lora": "merge",
        "prune": "prune",
        "distill": "distill",
        "quantize": "quantize_onnx" if stage.type == "quantize" and stage.quantize.method in ONNX_METHODS else "quantize_llmc",
    }[stage.type]
    return importlib.import_module(f"{__package__}.{module}").run


def library_needed(stage: StageConfig) -> str | None:
    if stage.type == "quantize":
        return "optimum.onnxruntime" if stage.quantize.method in ONNX_METHODS else "llmcompressor"
    if stage.type == "prune" and stage.prune.method in ("attention-heads", "channels"):
        return "torch_pruning"
    return None


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check_chain(config: CompressConfig, source: ModelRef) -> None:
    """Refuse, with one sentence, a chain that cannot run here; nothing has been written yet."""
    stages = config.stages
    for i, stage in enumerate(stages):
        where = f"Stage {i + 1} ({stage.name})"
        library = library_needed(stage)
        if library and not _available(library):
            raise BadInputError(f"{where} needs {library.split('.')[0]}, which is in the image {IMAGE_OF_LIBRARY[library]}, not in this one.")
        if stage.type == "merge_lora":
            if i > 0:
                raise BadInputError(f"{where}: mergeLora must be the first stage (it needs the adapter's base, the chain's input).")
            if source.format != "peft-adapter" and not stage.merge_lora.adapter_path:
                raise BadInputError(f"{where}: the input is not a LoRA adapter, so mergeLora needs adapterPath.")
        if stage.type == "quantize":
            if i != len(stages) - 1:
                raise BadInputError(f"{where}: quantize must be the last stage (its output is not a model the other stages can train).")
            method = stage.quantize.method
            if method in CALIBRATED and stage.quantize.calibration is None:
                raise BadInputError(f"{where}: {method} needs calibration data (quantize.calibration.datasetUri).")
            if method in LLMC_METHODS and source.task != "causal-lm":
                raise BadInputError(f"{where}: {method} writes a vLLM checkpoint, which is for causal language models; "
                                    f"this model is a {source.task} model (use onnx-dynamic-int8).")
            for path in [stage.quantize.calibration.path] if stage.quantize.calibration else []:
                _exists(path, f"{where}: the calibration data")
        if stage.type == "distill":
            _exists(stage.distill.dataset_path, f"{where}: the distillation data")
            if stage.distill.student_path:
                _exists(stage.distill.student_path, f"{where}: the student model")
        if stage.type == "prune" and stage.prune.recovery:
            _exists(stage.prune.recovery.dataset_path, f"{where}: the recovery data")
    if source.format == "peft-adapter" and stages[0].type != "merge_lora":
        raise BadInputError("The input is a LoRA adapter: the first stage must be mergeLora.")
    if source.format in ("onnx", "compressed-tensors"):
        raise BadInputError(f"The input model in {source.path} is already quantized ({source.format}); compress the model it came from.")
    if config.evaluation:
        _exists(config.evaluation.path, "The evaluation data")


def _exists(path: str, what: str) -> None:
    if not Path(path).exists():
        raise BadInputError(f"{what} {path} does not exist.")
