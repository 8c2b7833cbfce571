"""Load the base model and tokenizer, and make only the parameters the method trains trainable."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .errors import BadInputError

log = logging.getLogger(__name__)

# The attention projections: the usual LoRA choice, small enough to keep adapters well under 1 %
# of the model. Users who want the MLPs too list them (or "all-linear") in lora.targetModules.
DEFAULT_LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "bloom": ["query_key_value", "dense"],
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_precision(requested: str | None) -> str:
    """The mixed-precision mode to train in; fp16 has no CPU support in the Trainer, so refuse it there."""
    cuda = torch.cuda.is_available()
    if requested is None:
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and not cuda:
        raise BadInputError("Precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on CPU.")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise BadInputError("Precision 'bf16' is not supported by this GPU; use 'fp16' or 'fp32'.")
    return requested


def _is_local_reference(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path)


def _source_kwargs(model_cfg) -> dict:
    kwargs = {}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    token = os.environ.get(model_cfg.token_env) if model_cfg.token_env else None
    if token:
        kwargs["token"] = token  # passed to the hub client only; never logged or saved
    return kwargs


def _check_source(model_cfg) -> None:
    if _is_local_reference(model_cfg.path) and not Path(model_cfg.path).expanduser().is_dir():
        raise BadInputError(f"Model path {model_cfg.path!r} does not exist or is not a directory.")


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    _check_source(model_cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_cfg.path, **_source_kwargs(model_cfg))
    except (OSError, ValueError) as error:
        if _is_local_reference(model_cfg.path):
            raise BadInputError(f"Model path {model_cfg.path!r} has no loadable tokenizer ({_first_line(error)}).") from None
        raise
    if tokenizer.pad_token is None:
        # Padding is masked out of attention and loss, so reusing EOS as pad is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(cfg, precision: str):
    from transformers import AutoModelForCausalLM

    _check_source(cfg.model)
    kwargs = _source_kwargs(cfg.model)
    if cfg.method == "qlora":
        kwargs["quantization_config"] = _bnb_config(cfg.qlora)
        kwargs["dtype"] = DTYPES[cfg.qlora.compute_dtype]
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif cfg.uses_peft and precision != "fp32":
        # The base is frozen under PEFT, so it can live in the compute dtype and halve its memory.
        kwargs["dtype"] = DTYPES[precision]
    else:
        # Full and freeze keep fp32 master weights; mixed precision comes from autocast.
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, **kwargs)
    except (OSError, ValueError) as error:
        if _is_local_reference(cfg.model.path):
            raise BadInputError(f"Model path {cfg.model.path!r} has no loadable causal LM ({_first_line(error)}).") from None
        raise
    return model


def _bnb_config(qlora_cfg):
    if not torch.cuda.is_available():
        raise BadInputError("Method 'qlora' needs a CUDA GPU, because bitsandbytes 4-bit kernels do not run on CPU.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora_cfg.quant_type,
        bnb_4bit_compute_dtype=DTYPES[qlora_cfg.compute_dtype],
        bnb_4bit_use_double_quant=qlora_cfg.double_quant,
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")[:200]


# ---- methods -------------------------------------------------------------------------------

def apply_method(cfg, model, gradient_checkpointing: bool = False):
    """Return the model to train, with only the method's parameters requiring gradients."""
    if cfg.method == "full":
        return model
    if cfg.method == "freeze":
        freeze_lower_layers(model, cfg.freeze.trainable_layers)
        return model
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        return add_lora(model, cfg.lora)
    if cfg.method == "lora":
        return add_lora(model, cfg.lora)
    if cfg.method == "prompt-tuning":
        return add_prompt_tuning(model, cfg.prompt_tuning, cfg.model.path)
    raise BadInputError(f"Unknown method {cfg.method!r}.")


def decoder_layers(model) -> nn.ModuleList:
    """The model's stack of transformer blocks: the longest ModuleList, which every decoder-only LM has."""
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not candidates:
        raise BadInputError("Method 'freeze' cannot find the model's list of transformer layers.")
    return max(candidates, key=len)


def freeze_lower_layers(model, trainable_layers: int) -> None:
    layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise BadInputError(f"freeze.trainableLayers={trainable_layers} exceeds the model's {len(layers)} layers.")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable_layers:]:
        layer.requires_grad_(True)
    # The head, and the final norm that feeds it, adapt together with the top layers.
    model.get_output_embeddings().requires_grad_(True)
    in_layers = {id(m) for layer in layers for m in layer.modules()}
    for module in model.modules():
        if "Norm" in type(module).__name__ and id(module) not in in_layers:
            module.requires_grad_(True)


def linear_module_names(model) -> list[str]:
    """Leaf names of the modules LoRA can wrap (Linear, GPT-2's Conv1D, 4-bit Linear)."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_lora_targets(model, requested: list[str] | None) -> list[str] | str:
    if requested in (["all-linear"], "all-linear"):
        return "all-linear"
    targets = requested or DEFAULT_LORA_TARGETS.get(model.config.model_type)
    if targets is None:
        log.info("no default LoRA targets for model type %r; using all linear layers", model.config.model_type)
        return "all-linear"
    available = linear_module_names(model)
    for target in targets:
        if target not in available:
            raise BadInputError(
                f"LoRA target module {target!r} is not in the model, whose linear layers are: {', '.join(available)}.")
    return list(targets)


def add_lora(model, lora_cfg):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=resolve_lora_targets(model, lora_cfg.target_modules),
    )
    return get_peft_model(model, config)


def add_prompt_tuning(model, pt_cfg, tokenizer_path: str):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    kwargs = {}
    if pt_cfg.init_text:
        # Starting the virtual tokens from a real phrase trains faster than random vectors.
        kwargs = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": pt_cfg.init_text,
                  "tokenizer_name_or_path": tokenizer_path}
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pt_cfg.num_virtual_tokens, **kwargs)
    return get_peft_model(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; shared tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        # A ZeRO-3 partitioned parameter is an empty tensor; ds_numel is its whole size.
        n = getattr(p, "ds_numel", None) or p.numel()
        # 4-bit weights are packed two per byte; count the values they stand for.
        if type(p).__name__ == "Params4bit":
            n *= 2
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
