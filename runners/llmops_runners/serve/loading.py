"""The served folder into a backend, its tokenizer and the limits requests are checked against.

A folder with a `*.onnx` graph (what compress-onnx's onnx-dynamic-int8 stage writes) runs on ONNX
Runtime through Optimum; any other model folder on torch through transformers. Folders written by
transformers 5.x (the fine-tuning runner, the compress family) are read through `hf_compat`, as
the compress-onnx runner reads them: this family has transformers 4.x, for Optimum.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cpu import cpu_flags, usable_cores
from ..errors import BadInputError
from ..hf_compat import fetch, load_tokenizer, readable_config
from .config import ServeConfig

log = logging.getLogger("llmops_runners.serve")

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
FALLBACK_MODEL_LEN = 2048
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


@dataclass
class LoadedModel:
    backend: Any  # backends.TorchBackend or backends.OnnxBackend
    tokenizer: Any
    root: str  # the folder served (vLLM's `root` of the base model's card)
    max_model_len: int
    vocab_size: int
    eos_ids: frozenset[int]
    pad_id: int
    threads: int


def load(config: ServeConfig) -> LoadedModel:
    folder = Path(fetch(config.model.path, config.model.revision, config.model.token_env)).expanduser()
    if not folder.is_dir():
        raise BadInputError(f"The model {config.model.path} does not exist.")
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            raise BadInputError(f"{folder} is a LoRA adapter: serve its base model as model.path and the adapter under adapters.")
        raise BadInputError(f"{folder} holds no model: there is no config.json in it.")
    raw = json.loads((folder / "config.json").read_text())
    architectures = raw.get("architectures") or []
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise BadInputError(f"The model in {folder} is a {', '.join(architectures) or 'model without architectures'}; "
                            "this server generates text with causal language models.")
    threads = set_threads()
    try:
        tokenizer = load_tokenizer(folder)
    except (OSError, ValueError, TypeError) as error:
        raise BadInputError(f"The model in {folder} has no tokenizer this server can read ({first_line(error)}).") from None
    if any(folder.glob("*.onnx")):
        backend = _onnx_backend(folder, threads)
    else:
        backend = _torch_backend(folder, config.dtype)
    max_model_len = model_len(raw, config.max_model_len)
    vocab = int(raw.get("vocab_size") or len(tokenizer))
    eos = eos_ids(folder, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    log.info("serving %s (%s) as %r: max model length %d, %d threads", folder, backend.format, config.served_model_name,
             max_model_len, threads)
    return LoadedModel(backend, tokenizer, str(folder), max_model_len, vocab, eos, pad, threads)


def set_threads() -> int:
    """torch's intra-op threads: OMP_NUM_THREADS when set, else the cores the pod may use (see `usable_cores`)."""
    import torch

    wanted = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(wanted) if wanted.isdigit() and int(wanted) > 0 else usable_cores()
    torch.set_num_threads(threads)
    return threads


def model_len(raw_config: dict, requested: int | None) -> int:
    """maxModelLen: the one asked for, which may not exceed the model's positions, else the model's."""
    text_config = raw_config.get("text_config") or {}
    derived = next((int(c[k]) for c in (raw_config, text_config) for k in POSITION_KEYS if isinstance(c.get(k), int)), None)
    if requested is None:
        if derived is None:
            log.warning("the model's config names no maximum length; serving up to %d tokens (set maxModelLen)", FALLBACK_MODEL_LEN)
        return derived or FALLBACK_MODEL_LEN
    if derived is not None and requested > derived:
        raise BadInputError(f"maxModelLen {requested} is more than the model's {derived} positions (max_position_embeddings).")
    return requested


def eos_ids(folder: Path, tokenizer) -> frozenset[int]:
    """Tokens that end a reply: generation_config.json's eos_token_id (often several, e.g. end of turn) and the tokenizer's."""
    ids: set[int] = set()
    generation = folder / "generation_config.json"
    if generation.is_file():
        value = json.loads(generation.read_text()).get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def resolve_dtype(requested: str, checkpoint: str | None, flags: set[str]) -> str:
    """float32 or bfloat16. "auto": a 16-bit checkpoint stays 16-bit (as bfloat16) only on a CPU with
    bfloat16 instructions; elsewhere bfloat16 matmuls are emulated, slower than float32."""
    if requested != "auto":
        return requested
    if checkpoint in ("bfloat16", "float16") and flags & BF16_CPU_FLAGS:
        return "bfloat16"
    return "float32"


def _torch_backend(folder: Path, requested_dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    from .backends import TorchBackend

    raw = json.loads((folder / "config.json").read_text())
    dtype = resolve_dtype(requested_dtype, raw.get("torch_dtype") or raw.get("dtype"), cpu_flags())
    model = AutoModelForCausalLM.from_pretrained(folder, config=readable_config(folder), dtype=getattr(torch, dtype))
    model.eval()
    log.info("weights in %s", dtype)
    return TorchBackend(model)


def _onnx_backend(folder: Path, threads: int):
    import onnxruntime
    from optimum.onnxruntime import ORTModelForCausalLM

    from .backends import OnnxBackend

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # ONNX Runtime would size its pool by the node's cores, not the pod's
    options.inter_op_num_threads = 1
    try:
        model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, use_cache=True, use_io_binding=False)
    except (OSError, ValueError) as error:
        raise BadInputError(f"The ONNX model in {folder} cannot be served ({first_line(error)}); "
                            "export it with past key values (task text-generation-with-past), as onnx-dynamic-int8 does.") from None
    if not model.key_value_input_names:
        raise BadInputError(f"The ONNX model in {folder} has no past key values inputs; "
                            "export it with the task text-generation-with-past, as onnx-dynamic-int8 does.")
    return OnnxBackend(model)


def adapter_problem(path: str) -> str | None:
    """Why `path` is not a LoRA adapter this server can load, in one sentence; None when it looks right."""
    folder = Path(path)
    if not folder.is_dir():
        return f"The adapter path {path} does not exist or is not a directory."
    file = folder / "adapter_config.json"
    if not file.is_file():
        return f"No adapter found at {path}: there is no adapter_config.json in it."
    try:
        peft_type = json.loads(file.read_text()).get("peft_type")
    except json.JSONDecodeError:
        return f"The adapter_config.json in {path} is not valid JSON."
    if peft_type != "LORA":
        return f"The adapter at {path} is a {peft_type} adapter; this server serves LoRA adapters only."
    return None


def first_line(error: BaseException) -> str:
    """An exception's text on one line (torch's state-dict errors put the size mismatch on the second)."""
    text = " ".join(str(error).split())
    return (text[:297] + "...") if len(text) > 300 else (text or type(error).__name__)
