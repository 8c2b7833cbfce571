"""The FastAPI app: vLLM's OpenAI-compatible routes, /health and /metrics on one port.

Every refusal is an OpenAI-style JSON error (`errors.error_body`), including FastAPI's own
validation errors (400 instead of its 422 and its `detail` list) and unknown routes; an
unexpected exception is a 500 of the same shape, and the process goes on serving.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import prompts, responses
from .config import ServeConfig
from .errors import APIError, error_body
from .metrics import ServeMetrics
from .protocol import ChatCompletionRequest, CompletionRequest, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from .server import Server

log = logging.getLogger("llmops_runners.serve")
DISCONNECT_POLL_SECONDS = 1.0
# /health's 503 while the model loads is a state, not a failed request; /metrics is the scraper's.
UNCOUNTED_PATHS = ("/health", "/metrics")


def create_app(config: ServeConfig, on_fatal: Callable[[int, str], None]) -> FastAPI:
    metrics = ServeMetrics(config.served_model_name)
    server = Server(config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start_loading(on_fatal)  # the port answers (/health: 503) while the model loads
        yield
        server.stop()

    app = FastAPI(title="llmops serve (OpenAI-compatible)", lifespan=lifespan)
    # vLLM's own HTTP series (http_requests_total by handler and status class, durations), from the
    # library vLLM uses: the same error-rate queries and alerts read both servers.
    Instrumentator(excluded_handlers=list(UNCOUNTED_PATHS), registry=metrics.registry).instrument(app)
    _error_handlers(app)

    @app.get("/health")
    async def health():
        server.require_ready()
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        server.require_ready()
        return JSONResponse({"object": "list", "data": server.model_cards()})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.require_ready()
        body.check_unsupported()
        adapter = server.resolve(body.model)
        model = server.model
        prompt_ids = prompts.completion_ids(model.tokenizer, body.single_prompt(), model.vocab_size)
        params = prompts.sampling_params(body, body.max_tokens, len(prompt_ids), model.max_model_len, config.max_tokens_limit)
        stream = server.engine.submit(prompt_ids, params, adapter)
        rid, created, name = responses.request_id("cmpl"), _now(), body.model or config.served_model_name
        if body.stream:
            return _event_stream(_completion_events(stream, rid, created, name, _include_usage(body)), stream)
        text, last = await _collect(stream, request)
        counts = responses.usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(responses.completion(rid, created, name, text, last.finish_reason, last.stop_reason, counts))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.require_ready()
        body.check_unsupported()
        adapter = server.resolve(body.model)
        model = server.model
        prompt_ids = prompts.chat_ids(model.tokenizer, body.plain_messages())
        params = prompts.sampling_params(body, body.requested_max_tokens(), len(prompt_ids), model.max_model_len,
                                         config.max_tokens_limit)
        stream = server.engine.submit(prompt_ids, params, adapter)
        rid, created, name = responses.request_id("chatcmpl"), _now(), body.model or config.served_model_name
        if body.stream:
            return _event_stream(_chat_events(stream, rid, created, name, _include_usage(body)), stream)
        text, last = await _collect(stream, request)
        counts = responses.usage(last.prompt_tokens, last.completion_tokens)
        return JSONResponse(responses.chat_completion(rid, created, name, text, last.finish_reason, last.stop_reason, counts))

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest):
        return PlainTextResponse(await server.load_adapter(body.lora_name, body.lora_path))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest):
        return PlainTextResponse(await server.unload_adapter(body.lora_name))

    return app


# -- generation ---------------------------------------------------------------------------------

async def _collect(stream, request: Request):
    """The whole text and the last Output; the sequence is aborted if the client goes away first
    (so its batch slot is freed), as vLLM does for non-streaming requests."""
    parts, getter = [], None
    try:
        while True:
            # One pending get at a time, never cancelled by the poll (a cancelled get could drop an Output).
            getter = getter or asyncio.ensure_future(stream.get())
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_SECONDS)
            if not done:
                if await request.is_disconnected():
                    raise APIError(499, "The client closed the connection.")
                continue
            out, getter = getter.result(), None
            if out.error:
                raise APIError(500, out.error)
            parts.append(out.text)
            if out.finish_reason:
                return "".join(parts), out
    finally:
        if getter is not None:
            getter.cancel()
        stream.abort()  # frees the batch slot if it is still running; a no-op for a finished sequence


def _event_stream(events: AsyncIterator[str], stream) -> StreamingResponse:
    async def guarded():
        try:
            async for event in events:
                yield event
        finally:
            stream.abort()  # the client went away (the generator is closed): free the batch slot

    return StreamingResponse(guarded(), media_type="text/event-stream")


async def _outputs(stream):
    while True:
        out = await stream.get()
        yield out
        if out.finish_reason or out.error:
            return


async def _completion_events(stream, rid, created, name, include_usage) -> AsyncIterator[str]:
    async for out in _outputs(stream):
        if out.error:
            yield responses.sse(error_body(500, out.error))
            break
        yield responses.sse(responses.completion_chunk(rid, created, name, out.text, out.finish_reason, out.stop_reason))
        if out.finish_reason and include_usage:
            counts = responses.usage(out.prompt_tokens, out.completion_tokens)
            yield responses.sse(responses.usage_chunk(rid, created, name, "text_completion", counts))
    yield responses.DONE


async def _chat_events(stream, rid, created, name, include_usage) -> AsyncIterator[str]:
    # As vLLM: a first chunk with the role, then content deltas; the last one carries finish_reason.
    yield responses.sse(responses.chat_chunk(rid, created, name, {"role": "assistant", "content": ""}))
    async for out in _outputs(stream):
        if out.error:
            yield responses.sse(error_body(500, out.error))
            break
        delta = {"content": out.text} if out.text or not out.finish_reason else {}
        yield responses.sse(responses.chat_chunk(rid, created, name, delta, out.finish_reason, out.stop_reason))
        if out.finish_reason and include_usage:
            counts = responses.usage(out.prompt_tokens, out.completion_tokens)
            yield responses.sse(responses.usage_chunk(rid, created, name, "chat.completion.chunk", counts))
    yield responses.DONE


def _include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _now() -> int:
    return int(time.time())


# -- errors -------------------------------------------------------------------------------------

def _error(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.status, str(error), error.param, error.type), status_code=error.status)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError):
        return _error(validation_error(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(APIError(500, f"Internal error: {type(error).__name__}."))


def validation_error(errors: list[dict]) -> APIError:
    """FastAPI's validation errors as one 400 naming the first offending field (`messages.0.content`)."""
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "invalid request"}
    # pydantic names the member of a union it tried (`prompt.str`, `content.list[TextPart]`): not a field.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_member(p)]
    where = ".".join(loc) or None
    kind, text = first.get("type", ""), str(first.get("msg", "invalid"))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return APIError(400, f"The request body is not valid JSON{f' ({detail})' if detail else ''}.")
    if kind == "missing":
        return APIError(400, f"The field '{where}' is required." if where else "The request has no body.", where)
    if kind in ("model_attributes_type", "dict_type") and not loc:
        return APIError(400, "The request body must be a JSON object.")
    return APIError(400, f"Invalid value for '{where}': {text.removeprefix('Value error, ')}." if where else f"{text}.", where)


def _union_member(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "dict", "list"))

