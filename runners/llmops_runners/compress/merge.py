"""mergeLora: fold a PEFT adapter into its base and write a plain transformers model."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import BadInputError
from .models import ModelRef, adapter_base, auto_class, is_adapter, load_tokenizer, read_config, readable_config, save, task_of_config
from .stages import StageContext, StageOutcome


def run(settings, model: ModelRef, ctx: StageContext) -> StageOutcome:
    import torch
    from peft import PeftModel

    if model.format == "peft-adapter":
        adapter, base = model.path, model.base_path
    else:  # the input is the base; the adapter is named by the stage
        adapter, base = Path(settings.adapter_path), model.path
        if not is_adapter(adapter):
            raise BadInputError(f"mergeLora.adapterPath {adapter} holds no PEFT adapter (no adapter_config.json).")
        adapter_base(adapter, str(base))  # the base must be a model folder
    task = task_of_config(read_config(base), base)
    merged = PeftModel.from_pretrained(auto_class(task).from_pretrained(base, dtype=torch.float32, config=readable_config(base)), str(adapter)).merge_and_unload()
    # The adapter's folder carries the tokenizer the job trained with (chat template included).
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    save(merged, tokenizer, ctx.out)
    return StageOutcome(ModelRef(ctx.out, task), {"adapterParameters": float(_adapter_parameters(adapter))})


def _adapter_parameters(adapter: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in adapter.glob("adapter_model*.safetensors"):
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():
                total += math.prod(tensors.get_slice(key).get_shape())
    return total
