"""The serving runner's config contract (docs/runner-contract.md, "Serving runner contract").

The operator writes it into a ConfigMap mounted at /etc/llmops/serve.json. camelCase keys, unknown
keys rejected, validation errors one sentence naming the field: the same rules as the other
runners' configs (`llmops_runners.config`). Only pydantic is imported here, so the contract can be
checked without the ML stack.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import _Block

DTYPES = ("auto", "float32", "bfloat16")


class ServedModel(_Block):
    # A local folder (a transformers model, or an ONNX export: model.onnx + config + tokenizer), or a
    # Hub id, downloaded unless HF_HUB_OFFLINE=1, with the token from the env var named by tokenEnv.
    path: str = Field(min_length=1)
    revision: str | None = None
    token_env: str | None = None


class AdapterSource(_Block):
    name: str = Field(min_length=1, max_length=253)
    path: str = Field(min_length=1)


class ServeConfig(_Block):
    model: ServedModel
    served_model_name: str | None = Field(None, min_length=1, max_length=253)  # None: model.path, as vLLM
    adapters: list[AdapterSource] | None = None
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    max_model_len: int | None = Field(None, ge=2)  # None: the model's max_position_embeddings
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_tokens_limit: int = Field(2048, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    @model_validator(mode="after")
    def _names(self) -> "ServeConfig":
        self.served_model_name = self.served_model_name or self.model.path
        self.adapters = self.adapters or []
        seen = {self.served_model_name}
        for i, adapter in enumerate(self.adapters):
            if adapter.name in seen:
                what = "the served model name" if adapter.name == self.served_model_name else "another adapter's"
                raise ValueError(f"adapters[{i}].name {adapter.name!r} is already {what}; every model name must be unique")
            seen.add(adapter.name)
        return self
