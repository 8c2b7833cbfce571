"""Reading a Hugging Face model folder whichever transformers wrote it, and fetching one from the Hub.

The runner families pin different transformers (docs/dependencies.md): the fine-tuning runner and
llm-compressor write folders with 5.x, while the ONNX families (compress-onnx, serve) read them
with 4.x, because optimum-onnx needs it. What 4.x misreads in a 5.x folder is put right here, in
one place, for every runner that reads such folders.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import BadInputError


def readable_config(path: Path):
    """The model's config, with transformers 5's RoPE settings where transformers 4 (the ONNX image's)
    reads them: 4.x ignores `rope_parameters` and would build the model with its default rope_theta
    (10000 instead of, say, Llama 3's 500000), a wrong model, silently."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    rope = json.loads((path / "config.json").read_text()).get("rope_parameters")
    if isinstance(rope, dict) and not isinstance(getattr(config, "rope_parameters", None), dict):
        for key in ("rope_theta", "partial_rotary_factor"):
            if key in rope:
                setattr(config, key, rope[key])
        if rope.get("rope_type", "default") != "default":
            config.rope_scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return config


def load_tokenizer(path: Path):
    """AutoTokenizer; where this transformers cannot read what another wrote (4.x reading 5.x's
    `TokenizersBackend` class), the same tokenizer built from tokenizer.json and its settings."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ValueError, TypeError, AttributeError):
        if not (path / "tokenizer.json").is_file():
            raise
    settings = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").is_file() else {}
    for key in ("tokenizer_class", "backend", "auto_map", "added_tokens_decoder"):
        settings.pop(key, None)
    extra = settings.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        settings["additional_special_tokens"] = extra
    settings.setdefault("model_input_names", ["input_ids", "attention_mask"])  # as the 5.x tokenizer: no token_type_ids
    template = path / "chat_template.jinja"
    if template.is_file() and "chat_template" not in settings:
        settings["chat_template"] = template.read_text()
    return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **settings)


def fetch(path: str, revision: str | None, token_env: str | None) -> str:
    """A local folder as it is; a Hub id downloaded (into HF_HOME) first. The token stays in memory."""
    if path.startswith(("/", "./", "../", "~")):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(path, revision=revision, token=os.environ.get(token_env) if token_env else None)
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError) as error:
        raise BadInputError(f"The model {path} could not be downloaded from the Hub ({type(error).__name__}).") from None
