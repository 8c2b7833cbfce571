"""onnx-dynamic-int8: export to ONNX with Optimum, then ONNX Runtime's dynamic INT8 (`ORTQuantizer`).

Dynamic quantization stores the weights of MatMul and Gather (embedding) nodes as 8-bit integers
with per-channel scales and quantizes activations on the fly, per batch: no calibration data.
MatMuls of two activations stay FP32 (`excluded_nodes`), and a config written by transformers 5
is handed to this image's transformers 4 in the form it reads (`readable_source`).
The output folder holds only the INT8 model (`model.onnx`, the name Optimum's ORT classes load by
default), its config and the input's tokenizer; the FP32 export is measured in a scratch folder
beside it, then deleted.

Which integer kernels the weights are made for depends on the CPU (see `_quantization_config`):
the choice is made for the CPU this job runs on, and both choices run on any x86-64 CPU.
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
import shutil
import time
from pathlib import Path

from ..cpu import cpu_flags  # a module global, so tests can stand in another CPU's flags
from ..errors import BadInputError
from .evaluate import forward_seconds
from .models import WEIGHT_SUFFIXES, ModelRef, read_config
from .stages import StageContext, StageOutcome

log = logging.getLogger("llmops_runners.compress")

ONNX_FILE = "model.onnx"
EXPORT_TASKS = {"sequence-classification": "text-classification", "causal-lm": "text-generation-with-past"}
DEFAULT_IGNORE = {"causal-lm": ["lm_head"], "sequence-classification": ["classifier", "score"]}
PROTOBUF_LIMIT = 2**31  # a graph over 2 GiB keeps its weights in an external data file
LATENCY_TOKENS = 64
LATENCY_REPEATS = 10


def run(settings, model: ModelRef, ctx: StageContext) -> StageOutcome:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer

    if model.task not in EXPORT_TASKS:
        raise BadInputError(f"onnx-dynamic-int8 exports causal language models and sequence classifiers, not {model.task} models.")
    scratch, view = (ctx.out.parent / (ctx.out.name + suffix) for suffix in (".fp32", ".source"))
    for folder in (scratch, view):
        shutil.rmtree(folder, ignore_errors=True)
    ctx.out.mkdir(parents=True, exist_ok=True)
    try:
        ctx.progress(0, 3)
        # Validation (ONNX Runtime against PyTorch on dummy inputs) would hold both models in memory at
        # once; the pipeline measures the quantized model against the input on real data anyway.
        main_export(str(readable_source(model.path, view)), scratch, task=EXPORT_TASKS[model.task], device="cpu",
                    library_name="transformers", do_validation=False)
        ctx.progress(1, 3)
        fp32_bytes = _onnx_bytes(scratch)
        ignore = settings.ignore if settings.ignore is not None else DEFAULT_IGNORE[model.task]
        excluded = excluded_nodes(scratch / ONNX_FILE, ignore)
        config, kernels = _quantization_config(excluded)
        log.info("onnx-dynamic-int8: %s kernels; %d nodes left in FP32 (activation MatMuls, and %s)", kernels, len(excluded),
                 ", ".join(ignore) or "no ignored module")
        int8 = scratch / "int8"
        external = fp32_bytes >= PROTOBUF_LIMIT
        with _quiet_root_logger():
            ORTQuantizer.from_pretrained(scratch, file_name=ONNX_FILE).quantize(
                quantization_config=config, save_dir=int8, file_suffix="quantized", use_external_data_format=external)
        # Only the graph and Optimum's record of the quantization settings go to the output.
        _place_graph(int8 / "model_quantized.onnx", ctx.out / ONNX_FILE, external)
        shutil.move(int8 / "ort_config.json", ctx.out / "ort_config.json")
        ctx.progress(2, 3)
        shutil.copy2(scratch / "config.json", ctx.out / "config.json")  # the config the graph was exported from
        _copy_tokenizer(model.path, ctx.out)
        int8_bytes = _onnx_bytes(ctx.out)
        vocab = int(read_config(model.path).get("vocab_size") or 1000)
        metrics = {
            "fp32OnnxBytes": float(fp32_bytes),
            "int8OnnxBytes": float(int8_bytes),
            "int8OnnxRatio": round(int8_bytes / fp32_bytes, 6),
            "fp32OnnxLatencyMs": round(onnx_latency_seconds(scratch, model.task, vocab) * 1000, 3),
            "int8OnnxLatencyMs": round(onnx_latency_seconds(ctx.out, model.task, vocab) * 1000, 3),
            "int8SignedWeights": 1.0 if kernels == "u8s8" else 0.0,
            "nodesLeftFp32": float(len(excluded)),
        }
        ctx.progress(3, 3)
    finally:
        for folder in (scratch, view):
            shutil.rmtree(folder, ignore_errors=True)
    return StageOutcome(model.with_path(ctx.out, format="onnx"), metrics)


def load_onnx(ref: ModelRef):
    """The ONNX model of `ref` behind Optimum's ORT class for its task: `model(**enc).logits`, `model.generate(...)`."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSequenceClassification

    cls = ORTModelForCausalLM if ref.task == "causal-lm" else ORTModelForSequenceClassification
    return cls.from_pretrained(ref.path)


def readable_source(source: Path, view: Path) -> Path:
    """`source`, or a view of it (links to its files) whose config this image's transformers 4.x reads right.

    transformers 5 writes RoPE settings inside `rope_parameters`; 4.x ignores that key and would
    export with its default rope_theta (10000) instead of, say, Llama 3's 500000: a wrong model,
    and silently. The view's config has them where 4.x reads them: `rope_theta`,
    `partial_rotary_factor` and, for a scaled RoPE, `rope_scaling`.
    """
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" in config:
        return source
    rope = dict(rope)
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            config[key] = rope.pop(key)
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = rope
    view.mkdir(parents=True)
    for file in source.iterdir():
        if file.name != "config.json":
            (view / file.name).symlink_to(file.resolve())
    (view / "config.json").write_text(json.dumps(config, indent=2))
    return view


def _quantization_config(excluded: list[str]):
    """Optimum's dynamic config for this CPU, and the kernels it selects ("u8s8" or "u8u8").

    ONNX Runtime multiplies uint8 activations by int8 weights (u8s8) with VPDPBUSD on CPUs with
    VNNI (AVX512-VNNI or AVX-VNNI): exact and fastest (2.2x FP32 for MiniLM on this machine's
    EPYC). Without VNNI, u8s8 goes through VPMADDUBSW, whose 16-bit sums can saturate; Optimum's
    AVX2 config avoids that with uint8 weights (u8u8), slower (1.2x FP32 here) but exact. ARM64
    has no saturation problem and takes u8s8. Per-channel scales cost 0.1 % in size and keep
    the logits 2-3x closer to FP32 than one scale per tensor (measured on MiniLM).
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    options = dict(is_static=False, per_channel=True, nodes_to_exclude=excluded)
    if platform.machine().lower() in ("aarch64", "arm64"):
        return AutoQuantizationConfig.arm64(**options), "u8s8"
    if cpu_flags() & {"avx512_vnni", "avx_vnni"}:
        return AutoQuantizationConfig.avx512_vnni(**options), "u8s8"
    return AutoQuantizationConfig.avx2(**options), "u8u8"


def excluded_nodes(onnx_file: Path, ignore: list[str]) -> list[str]:
    """Nodes left in FP32: those of the modules in `ignore` (names, or "re:" patterns), and every MatMul
    of two activations.

    The exporter names a node after the module that made it: `/bert/encoder/layer.0/attention/self/query/MatMul`
    is module `bert.encoder.layer.0.attention.self.query`; a name covers the module and its children.
    ONNX Runtime's own dynamic quantization only quantizes MatMuls with a constant weight
    (MatMulConstBOnly); Optimum's quantizer does not pass that option, so it would also quantize
    attention scores and a Llama's rotary angles (positions x frequencies, per tensor: angles off by
    radians at long context). Weights are what dynamic INT8 is for, so only they are quantized.
    """
    import onnx

    patterns = [re.compile(i[3:]) if i.startswith("re:") else re.compile(re.escape(i) + r"(\..+)?") for i in ignore]
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for node in graph.node:
        module = ".".join(node.name.strip("/").split("/")[:-1])
        if (module and any(p.fullmatch(module) for p in patterns)) or (node.op_type in ("MatMul", "Gemm") and node.input[1] not in constants):
            out.append(node.name)
            if node.op_type == "Gemm":  # the dynamic quantizer first rewrites a Gemm (a Linear on 2-D input) as this MatMul
                out.append(node.name + "_MatMul")
    return out


def onnx_latency_seconds(folder: Path, task: str, vocab_size: int) -> float:
    """Median ONNX Runtime time of one forward pass on one sequence of LATENCY_TOKENS tokens, after a warm-up.

    The ids are synthetic (the cost does not depend on which tokens they are), so no tokenizer is needed.
    """
    import torch

    model = load_onnx(ModelRef(folder, task, "onnx"))
    ids = (torch.arange(LATENCY_TOKENS) * 7919 % max(vocab_size - 1, 1) + 1).unsqueeze(0)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in getattr(model, "input_names", {}):
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return forward_seconds(model, inputs, LATENCY_REPEATS)


def _place_graph(quantized: Path, target: Path, external: bool) -> None:
    """The quantized graph under the name the ORT classes load by default (model.onnx).

    With external data, ONNX Runtime's quantizer names the data file after its own graph
    (model_quantized.onnx.data); it is re-saved as model.onnx_data, the name Optimum's exporter gives it.
    """
    if not external:
        shutil.move(quantized, target)
        return
    import onnx

    graph = onnx.load(str(quantized))  # with its external data
    onnx.save_model(graph, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=target.name + "_data")


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs one INFO line per tensor to the root logger: thousands for an LLM."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name.endswith((".onnx", ".onnx_data")))


def _copy_tokenizer(source: Path, target: Path) -> None:
    """The input's own tokenizer files (and chat template, generation config), byte for byte.

    Not the exporter's re-saved copy: this image's transformers 4.x would rewrite files that the
    transformers 5.x of the other images wrote, and cannot read some of them (TokenizersBackend).
    """
    for file in source.iterdir():
        if file.is_file() and file.name != "config.json" and not file.name.endswith(WEIGHT_SUFFIXES) \
                and file.suffix in (".json", ".txt", ".model", ".jinja", ".tiktoken"):
            shutil.copy2(file, target / file.name)
