"""w8a8-int8, w4a16, gptq, awq and fp8: llm-compressor's `oneshot`, saved as a compressed-tensors checkpoint.

vLLM serves the result as it is; transformers loads it too (compressed-tensors runs it on CPU), which
is how the pipeline evaluates it. The recipes (`recipe`):

- w8a8-int8: SmoothQuant (moves activation outliers into the weights), then GPTQ to INT8 weights, one
  scale per output channel; activations are quantized per token at run time (dynamic).
- w4a16: GPTQ to INT4 weights in groups of columns, activations left in 16 bits. gptq is the same
  recipe under the algorithm's name.
- awq: AWQ's activation-aware scales, then INT4 weights in groups (asymmetric, as AWQ is published).
- fp8: FP8 weights (per channel) and dynamic per-token FP8 activations: no calibration data. The
  quantization itself runs on CPU; serving FP8 needs a GPU (vLLM).

INT4 groups must divide every quantized layer's input width: the group size is the largest of the
sizes vLLM's INT4 kernels take (128, 64, 32) that does, else one scale per output channel.
"""
from __future__ import annotations

import contextlib
import logging
import time

from ..data import detect_format, has_chat_template
from ..errors import BadInputError
from . import examples
from .models import ModelRef
from .stages import StageContext, StageOutcome

log = logging.getLogger("llmops_runners.compress")

INT4_GROUP_SIZES = (128, 64, 32)
PER_CHANNEL = -1  # reported as the group size when one scale covers a whole output channel (GPTQ's convention)
SMOOTHING_STRENGTH = 0.8  # llm-compressor's W8A8 Llama example; the paper's default is 0.5, more for larger activation outliers


def run(settings, model: ModelRef, ctx: StageContext) -> StageOutcome:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    method = settings.method
    if model.task != "causal-lm":
        raise BadInputError(f"{method} writes a vLLM checkpoint for causal language models; this model is a {model.task} model.")
    ctx.progress(0, 3)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    # The checkpoint's own dtype: layers left unquantized (lm_head, embeddings, norms) stay as they were.
    lm = AutoModelForCausalLM.from_pretrained(model.path, dtype="auto")
    lm.eval()
    ignore = settings.ignore if settings.ignore is not None else ["lm_head"]
    group_size = int4_group_size(lm, ignore) if method in ("w4a16", "gptq", "awq") else None
    metrics: dict[str, float] = {"quantizedLayers": float(len(_targets(lm, ignore)))}
    if not metrics["quantizedLayers"]:
        raise BadInputError(f"{method} found no linear layer to quantize: quantize.ignore ({', '.join(ignore)}) leaves none.")
    calibration = {}
    if method != "fp8":
        if settings.calibration is None:  # check_chain refuses this before any stage runs; a direct call gets the same sentence
            raise BadInputError(f"{method} needs calibration data (quantize.calibration.datasetUri).")
        dataset = calibration_dataset(tokenizer, settings.calibration.path, settings.calibration.samples, ctx.config.max_seq_length)
        calibration = dict(dataset=dataset, num_calibration_samples=len(dataset), max_seq_length=ctx.config.max_seq_length,
                           shuffle_calibration_samples=False)
        metrics["calibrationSamples"] = float(len(dataset))
        metrics["calibrationTokens"] = float(sum(len(ids) for ids in dataset["input_ids"]))
    if group_size is not None:
        metrics["int4GroupSize"] = float(group_size)
    ctx.progress(1, 3)
    started = time.monotonic()
    with torch.no_grad(), _no_pinned_memory_without_cuda():
        oneshot(model=lm, recipe=recipe(method, ignore, group_size), **calibration)
    metrics["oneshotSeconds"] = round(time.monotonic() - started, 3)
    ctx.progress(2, 3)
    ctx.out.mkdir(parents=True, exist_ok=True)
    # save_compressed: packed INT4 / INT8 / FP8 tensors and quantization_config.quant_method "compressed-tensors".
    lm.save_pretrained(ctx.out, save_compressed=True)
    tokenizer.save_pretrained(ctx.out)
    ctx.progress(3, 3)
    return StageOutcome(model.with_path(ctx.out, format="compressed-tensors"), metrics)


@contextlib.contextmanager
def _no_pinned_memory_without_cuda():
    """Let AWQ run on a CPU-only machine.

    llm-compressor 0.14's AWQ pins its cached activations in page-locked memory before each grid
    search, to copy them to the GPU faster; pinning needs a CUDA driver and fails without one. With
    no GPU nothing is copied, so pinning is skipped. With a GPU nothing is changed.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available() or not hasattr(IntermediatesCache, "pin_memory"):
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def recipe(method: str, ignore: list[str], group_size: int | None) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "w8a8-int8":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=SMOOTHING_STRENGTH),
                GPTQModifier(targets=["Linear"], scheme="W8A8", ignore=ignore)]
    if method in ("w4a16", "gptq"):
        return [GPTQModifier(config_groups={"group_0": int4_scheme(group_size, symmetric=True)}, ignore=ignore)]
    if method == "awq":
        from llmcompressor.modifiers.transform import AWQModifier

        return [AWQModifier(), QuantizationModifier(config_groups={"group_0": int4_scheme(group_size, symmetric=False)}, ignore=ignore)]
    if method == "fp8":
        return [QuantizationModifier(targets=["Linear"], scheme="FP8_DYNAMIC", ignore=ignore)]
    raise BadInputError(f"{method} is not an llm-compressor method.")


def int4_scheme(group_size: int, symmetric: bool):
    """INT4 weights, 16-bit activations: W4A16 (symmetric) or W4A16_ASYM, with the group size that fits."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    grouping = dict(strategy="channel") if group_size == PER_CHANNEL else dict(strategy="group", group_size=group_size)
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, **grouping))


def int4_group_size(model, ignore: list[str]) -> int:
    """The largest group size in INT4_GROUP_SIZES dividing the input width of every quantized layer.

    The preset W4A16 takes 128; compressed-tensors refuses widths that 128 does not divide, and widths
    below it (the tests' tiny Llama: 64) would silently become one group per row.
    """
    widths = {module.in_features for _, module in _targets(model, ignore)}
    size = next((g for g in INT4_GROUP_SIZES if all(w % g == 0 for w in widths)), PER_CHANNEL)
    if size != INT4_GROUP_SIZES[0]:
        log.info("INT4 groups of %s: the quantized layers are %s wide", size if size > 0 else "a whole row", sorted(widths))
    return size


def _targets(model, ignore: list[str]) -> list:
    """The linear layers the recipe quantizes, matched as llm-compressor matches them (names, "re:" patterns)."""
    from compressed_tensors.utils import match_named_modules

    return list(match_named_modules(model, ["Linear"], ignore))


def calibration_dataset(tokenizer, path: str, samples: int, max_len: int):
    """The first `samples` records of `path`, tokenized as the model sees them: what `oneshot` takes without tokenizing again."""
    from datasets import Dataset

    texts = examples.texts("causal-lm", tokenizer, path, samples)
    # As the fine-tuning runner tokenizes: a chat template writes its own special tokens, anything else gets the tokenizer's.
    templated = has_chat_template(tokenizer) and detect_format(examples.records(path, 1), path) != "text"
    enc = tokenizer(texts, truncation=True, max_length=max_len, add_special_tokens=not templated)
    rows = [(ids, mask) for ids, mask in zip(enc["input_ids"], enc["attention_mask"]) if ids]
    if not rows:
        raise BadInputError(f"The calibration data {path} has no text to calibrate with.")
    return Dataset.from_dict({"input_ids": [r[0] for r in rows], "attention_mask": [r[1] for r in rows]})
