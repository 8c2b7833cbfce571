"""The state behind the routes: the model (loaded on a thread while /health answers 503), the
engine, and the adapters served by name.

Adapters have two names: the one clients send (`model`), and the one peft knows them by inside
the model (`adapter-N`, never reused). Unloading an adapter takes its public name away at once
(new requests get 404) while requests already running on it finish; the engine deletes it from the
model when none is left. With internal names never reused, loading the same public name again
meanwhile cannot collide with the copy still being retired.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, BadInputError
from . import responses
from .config import ServeConfig
from .errors import APIError, bad_request
from .loading import adapter_problem, first_line, load
from .metrics import ServeMetrics
from .protocol import reject_not_found

log = logging.getLogger("llmops_runners.serve")


@dataclass(frozen=True)
class Adapter:
    name: str  # what clients send as `model`
    path: str
    internal: str  # peft's adapter name inside the model


class Server:
    def __init__(self, config: ServeConfig, metrics: ServeMetrics):
        self.config, self.metrics = config, metrics
        self.model = None  # loading.LoadedModel once loaded
        self.engine = None  # engine.Engine once loaded
        self.adapters: dict[str, Adapter] = {}
        self.created = int(time.time())
        self._numbers = itertools.count(1)
        self._adapter_lock: asyncio.Lock | None = None

    def start_loading(self, on_fatal: Callable[[int, str], None]) -> None:
        threading.Thread(target=self._load, args=(on_fatal,), name="llmops-loader", daemon=True).start()

    def _load(self, on_fatal: Callable[[int, str], None]) -> None:
        """Load the model and the config's adapters; a failure stops the server (exit 2 for bad input, else 1)."""
        try:
            from .engine import Engine  # torch: imported here, on this thread, while the port already answers

            model = load(self.config)
            for source in self.config.adapters:
                problem = adapter_problem(source.path)
                if problem is None and not model.backend.supports_adapters:
                    problem = "LoRA adapters need a transformers model; this server runs an ONNX model."
                if problem:
                    raise BadInputError(f"adapters {source.name!r}: {problem}")
                adapter = Adapter(source.name, str(Path(source.path).resolve()), self._internal_name())
                try:
                    model.backend.add_adapter(adapter.internal, adapter.path)
                except Exception as error:  # noqa: BLE001 - peft's reasons are many (shapes, targets): all bad input
                    raise BadInputError(f"adapters {source.name!r}: the adapter at {source.path} cannot be loaded "
                                        f"({first_line(error)}).") from None
                self.adapters[adapter.name] = adapter
                log.info("adapter %s loaded from %s", adapter.name, adapter.path)
            engine = Engine(model.backend, model.tokenizer, model.eos_ids, model.pad_id, self.config.max_batch_size, self.metrics)
            engine.start()
            self.model, self.engine = model, engine
            log.info("ready: %s and %d adapters on port %d", self.config.served_model_name, len(self.adapters), self.config.port)
        except BadInputError as error:
            on_fatal(EXIT_BAD_INPUT, str(error))
        except BaseException as error:  # noqa: BLE001 - whatever stops loading must stop the server, with a reason
            log.exception("loading the model failed")
            on_fatal(EXIT_FAILED, f"Loading the model failed with {type(error).__name__}: {first_line(error)}.")

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def _internal_name(self) -> str:
        return f"adapter-{next(self._numbers)}"

    # -- requests -----------------------------------------------------------------------------

    def require_ready(self) -> None:
        """503 until the model serves; also once the engine thread is gone (a bug, not a request's fault):
        /health then fails too, and Kubernetes restarts the pod."""
        if self.engine is None:
            raise APIError(503, "The model is still loading; retry when /health answers 200.")
        if not self.engine.alive:
            raise APIError(503, "The engine has stopped; this server is not serving.")

    def resolve(self, name: str | None) -> str | None:
        """The backend's adapter name for the model a request names (None: the base model); 404 when unknown."""
        if name is None or name == self.config.served_model_name:
            return None
        adapter = self.adapters.get(name)
        if adapter is None:
            raise reject_not_found(name)
        return adapter.internal

    def model_cards(self) -> list[dict]:
        name = self.config.served_model_name
        cards = [responses.model_card(name, self.created, self.model.root, max_model_len=self.model.max_model_len)]
        cards += [responses.model_card(a.name, self.created, a.path, parent=name) for a in self.adapters.values()]
        return cards

    # -- vLLM's runtime LoRA API ----------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._adapter_lock is None:
            self._adapter_lock = asyncio.Lock()
        return self._adapter_lock

    async def load_adapter(self, name: str, path: str) -> str:
        self.require_ready()
        if not name or not path:
            raise bad_request("Both 'lora_name' and 'lora_path' must be provided.", "lora_name" if not name else "lora_path")
        if name == self.config.served_model_name:
            raise bad_request(f"The lora adapter '{name}' cannot take the base model's name.", "lora_name")
        # Shielded: a caller that goes away mid-load must not leave the adapter loaded in the model but not served.
        return await asyncio.shield(self._load_adapter(name, path))

    async def _load_adapter(self, name: str, path: str) -> str:
        async with self._lock():
            resolved = str(Path(path).resolve())
            existing = self.adapters.get(name)
            if existing is not None:
                if existing.path == resolved:  # a retry of the same load (the operator's reconcile): nothing to do
                    return f"Success: LoRA adapter '{name}' is already loaded from {existing.path}."
                raise bad_request(f"The lora adapter '{name}' has already been loaded (from {existing.path}).", "lora_name")
            if not self.model.backend.supports_adapters:
                raise bad_request("LoRA adapters need a transformers model; this server runs an ONNX model.", "lora_path")
            problem = await asyncio.to_thread(adapter_problem, path)
            if problem:
                raise bad_request(problem, "lora_path")
            adapter = Adapter(name, resolved, self._internal_name())
            try:
                await asyncio.wrap_future(self.engine.call(lambda: self.model.backend.add_adapter(adapter.internal, adapter.path)))
            except Exception as error:  # noqa: BLE001 - peft's reasons are many (shapes, targets): all the request's fault
                self.engine.retire_adapter(adapter.internal)  # whatever half of it peft built
                raise bad_request(f"The adapter at {path} cannot be loaded: {first_line(error)}", "lora_path") from None
            self.adapters[name] = adapter
        log.info("adapter %s loaded from %s", name, adapter.path)
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload_adapter(self, name: str) -> str:
        self.require_ready()
        if not name:
            raise bad_request("'lora_name' needs to be provided to unload a LoRA adapter.", "lora_name")
        async with self._lock():
            adapter = self.adapters.pop(name, None)
            if adapter is None:
                raise bad_request(f"The lora adapter '{name}' cannot be found.", "lora_name")
            self.engine.retire_adapter(adapter.internal)
        log.info("adapter %s unloaded", name)
        return f"Success: LoRA adapter '{name}' removed successfully."
