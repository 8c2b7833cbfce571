"""A model between two stages: a folder on disk, what it does (its task) and how it is stored.

Stages hand each other `ModelRef`s, never live modules: each stage loads what it needs, so a stage
that swaps the format (ONNX, compressed-tensors) is no different from one that keeps it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BadInputError
# Shared with the serving runner, which reads the same 5.x-written folders with transformers 4.x;
# re-exported here for the stages that import them from models.
from ..hf_compat import fetch, load_tokenizer, readable_config  # noqa: F401

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".pt")


@dataclass(frozen=True)
class ModelRef:
    path: Path
    task: str  # "causal-lm" or "sequence-classification"
    format: str = "transformers"  # or "onnx", "compressed-tensors", "peft-adapter"
    base_path: Path | None = None  # an adapter's base model

    def with_path(self, path: Path, **changes) -> "ModelRef":
        return replace(self, path=path, **changes)


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise BadInputError(f"{path} holds no model: there is no config.json (nor an adapter_config.json) in it.")
    return json.loads(file.read_text())


def task_of_config(config: dict, where: Path) -> str:
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "sequence-classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    raise BadInputError(
        f"The model in {where} is a {', '.join(architectures) or 'model without architectures'}; "
        "compression handles causal language models and sequence classifiers.")


def adapter_base(adapter: Path, given: str | None) -> Path:
    """The base an adapter was trained on: the one given, else the one its own config names."""
    if given:
        base = Path(given)
    else:
        named = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not named:
            raise BadInputError(f"The adapter in {adapter} names no base model; set the base model (spec.model.baseModelUri).")
        base = Path(named)
    if not (base / "config.json").is_file():
        raise BadInputError(f"The base model of the adapter in {adapter} is not at {base}; set the base model (spec.model.baseModelUri).")
    return base


def open_input(path: str, base_path: str | None) -> ModelRef:
    folder = Path(path)
    if not folder.is_dir():
        raise BadInputError(f"The input model {path} does not exist.")
    if is_adapter(folder):
        base = adapter_base(folder, base_path)
        return ModelRef(folder, task_of_config(read_config(base), base), "peft-adapter", base)
    config = read_config(folder)
    fmt = "compressed-tensors" if (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors" else "transformers"
    if any(folder.glob("*.onnx")):
        fmt = "onnx"
    return ModelRef(folder, task_of_config(config, folder), fmt)


def auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def load(ref: ModelRef):
    """(model, tokenizer) in fp32 on CPU, in eval mode; ONNX models through Optimum's ORT classes."""
    if ref.format == "peft-adapter":
        raise BadInputError(f"{ref.path} is a LoRA adapter: start the chain with a mergeLora stage.")
    tokenizer = load_tokenizer(ref.path)
    if ref.format == "onnx":
        from .quantize_onnx import load_onnx  # only the ONNX image has optimum

        return load_onnx(ref), tokenizer
    import torch

    kwargs = {}
    if ref.format == "compressed-tensors":
        from transformers import CompressedTensorsConfig

        # Packed INT4 layers have no `.weight` until their first forward; dequantized on load they
        # are plain Linears with the same logits, which every measurement can read.
        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    model = auto_class(ref.task).from_pretrained(ref.path, dtype=torch.float32, config=readable_config(ref.path), **kwargs)
    model.eval()
    return model, tokenizer


def save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def size_on_disk(path: Path) -> int:
    """Bytes of the weight files (what a compression shrinks), not tokenizer or config files."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


HEADS = ("lm_head", "classifier", "score", "pooler")  # outside the transformer blocks: never pruned


def weight_sparsity(model) -> float:
    """Fraction of zeros among the weights of the transformer blocks' linear layers (what pruning
    targets; the output head and BERT's pooler are left whole, so counting them would understate it)."""
    import torch

    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(part in HEADS for part in name.split(".")):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


def copy_model(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
