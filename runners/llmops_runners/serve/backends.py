"""One forward step of the batch, for the two kinds of model this server runs.

Both take left-padded `input_ids` / `attention_mask` / `position_ids` and the batch's cache, and
return the last position's logits ([rows, vocab], float32) and the new cache. Both hand their
cache to `kv_cache` as per-layer (keys, values) tensors when rows join or leave, and take it back.

LoRA adapters (torch only): several adapters and the base are served side by side in ONE batch.
peft's mixed-batch forward (`adapter_names=[...]`, one name per row, "__base__" for the base)
runs the base model's matmuls once for all rows and adds each adapter's low-rank term to its own
rows only. The alternative, one batch per adapter, would run the big matmuls once per adapter
and make an adapter's requests wait for the others' batches; the mixed batch costs only the small
per-adapter matmuls. Adapters are never merged into the weights (that would change the base rows).
"""
from __future__ import annotations

import inspect
import sys

import torch

from .kv_cache import Layers, attention_mask_4d

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class TorchBackend:
    format = "transformers"
    supports_adapters = True

    def __init__(self, model):
        self._base = model
        self._peft = None  # a PeftModel around _base once an adapter is loaded; _base then carries LoRA layers
        forward = inspect.signature(type(model).forward).parameters
        # Prefill needs the last position's logits only: [rows, 1, vocab] instead of [rows, prompt, vocab].
        self._last_only_kwarg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in forward), None)
        self._mask_kind = own_mask_kind(model)

    @property
    def adapters(self) -> set[str]:
        return set(self._peft.peft_config) if self._peft is not None else set()

    def forward(self, input_ids, attention_mask, position_ids, cache, adapters: list[str | None], last_only: bool):
        if self._mask_kind is not None:
            attention_mask = attention_mask_4d(attention_mask, input_ids.shape[1])
            if self._mask_kind == "additive":
                attention_mask = torch.zeros(attention_mask.shape, dtype=self._base.dtype).masked_fill(
                    ~attention_mask, torch.finfo(self._base.dtype).min)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True)
        if last_only and self._last_only_kwarg:
            kwargs[self._last_only_kwarg] = 1
        model = self._base
        if self._peft is not None:
            # Once wrapped, the base's layers carry LoRA modules: always name each row's adapter (or the base).
            model = self._peft
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        out = model(**kwargs)
        return out.logits[:, -1, :].float(), out.past_key_values

    @staticmethod
    def layers(cache) -> Layers:
        return list(cache.to_legacy_cache()) if hasattr(cache, "to_legacy_cache") else list(cache)

    @staticmethod
    def cache(layers: Layers):
        from transformers import DynamicCache

        return DynamicCache.from_legacy_cache(tuple(layers))

    def add_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if self._peft is None:
            try:
                self._peft = PeftModel.from_pretrained(self._base, path, adapter_name=name, is_trainable=False)
            except Exception:
                # from_pretrained injects LoRA layers into the base before it loads the weights: a
                # failure (shapes, targets) must not leave the base serving with half an adapter in it.
                _strip_lora_layers(self._base)
                raise
        else:
            self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self._peft.eval()

    def remove_adapter(self, name: str) -> None:
        if self._peft is None or name not in self._peft.peft_config:
            return
        if len(self._peft.peft_config) == 1:
            # peft cannot delete its last adapter (the PeftModel is left without an active one):
            # take the LoRA layers out instead, and serve the plain model again.
            self._base = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)


def own_mask_kind(model) -> str | None:
    """Whether this backend builds the model's 4-D attention mask itself, and in which form.

    transformers 4.5x builds a padded batch's mask with torch.vmap over a per-element mask function:
    for a small model on CPU that takes longer than the forward pass itself (most of a decode step,
    measured), and it is what makes a batch of 8 cost several times a batch of 1. A 4-D mask given
    to the model is used as it is. Only for models whose mask comes from `masking_utils` and whose
    layers all attend to the whole context (no sliding window, no chunks: their masks are more than
    causal + padding); the others get the 2-D mask and transformers' own construction.
    """
    config = model.config
    module = sys.modules.get(type(getattr(model, "base_model", model)).__module__)
    if module is None or not hasattr(module, "create_causal_mask"):
        return None
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return None
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return None
    if getattr(config, "attention_chunk_size", None):
        return None
    kinds = {"sdpa": "boolean", "eager": "additive"}  # sdpa takes True = attend; eager adds the mask to the scores
    return kinds.get(getattr(config, "_attn_implementation", None))


def _strip_lora_layers(model) -> None:
    """Put every peft layer of `model` back to the layer it wraps, and drop the adapter configs peft
    left on it (a later PeftModel would take them for loaded adapters)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


class OnnxBackend:
    """Optimum's ORTModelForCausalLM on an ONNX export with past key values (compress-onnx's model.onnx)."""

    format = "onnx"
    supports_adapters = False
    adapters: set[str] = set()

    def __init__(self, model):
        self._model = model
        self._positions = "position_ids" in model.input_names

    def forward(self, input_ids, attention_mask, position_ids, cache, adapters: list[str | None], last_only: bool):
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        if self._positions:  # without them Optimum numbers the columns, which is wrong for left-padded rows
            kwargs["position_ids"] = position_ids
        out = self._model(**kwargs)
        return out.logits[:, -1, :].float(), out.past_key_values

    @staticmethod
    def layers(cache) -> Layers:
        return [tuple(layer) for layer in cache]

    @staticmethod
    def cache(layers: Layers):
        return tuple(tuple(layer) for layer in layers)
