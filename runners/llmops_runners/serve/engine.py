"""The scheduler and decode loop: continuous batching on one worker thread.

Requests wait in a queue; between two decode steps the worker admits as many as the batch has
room for (maxBatchSize sequences), prefills them together (one forward over their left-padded
prompts: their first token, so time to first token is one prefill away, not a whole batch's
generation), joins them to the running batch's KV cache, and then decodes every running sequence
by one token in one forward. Each new token is detokenized and handed to its request's stream at
once; finished sequences leave the batch at the end of the step and their slots are free for the
next step. So a request never waits for another to finish, only for one step.

All model work (forward passes, adapter loading and unloading) happens on this one thread, so the
model is never used by two threads at once and the event loop only moves bytes. Anything else
the HTTP side needs done with the model (loading a LoRA adapter) is queued as a control and run
between two steps.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import kv_cache
from .detokenize import OutputText
from .metrics import ServeMetrics
from .sampling import SamplingParams, next_tokens

log = logging.getLogger("llmops_runners.serve.engine")
STATS_EVERY_SECONDS = 10.0


@dataclass
class Output:
    """What a sequence produced since its last Output; the last one has a finish_reason (or an error)."""

    text: str
    finish_reason: str | None  # "stop" (EOS or a stop string), "length", "abort"
    stop_reason: str | None  # the stop string that ended it
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # the engine failed this request: the client gets a 500
    token_ids: list[int] | None = None  # on the last Output: every generated token (EOS included)


class OutputStream:
    """Carries one sequence's Outputs from the worker thread to its request's coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._queue: asyncio.Queue[Output] = asyncio.Queue()
        self.aborted = False  # set by the request (client gone); the worker drops the sequence at its next step

    def put_nowait(self, output: Output) -> None:  # on the event loop
        self._queue.put_nowait(output)

    async def get(self) -> Output:
        """The next Output; when the request fell behind the engine (several are waiting), all of them as one,
        as vLLM merges them: under load a client gets fewer, larger chunks instead of a growing backlog."""
        out = await self._queue.get()
        while not (out.finish_reason or out.error) and not self._queue.empty():
            later = self._queue.get_nowait()
            out = Output(out.text + later.text, later.finish_reason, later.stop_reason, later.prompt_tokens,
                         later.completion_tokens, later.error, later.token_ids)
        return out

    def abort(self) -> None:
        self.aborted = True


def _deliver(outbox: list[tuple[OutputStream, Output]]) -> None:
    for stream, output in outbox:
        stream.put_nowait(output)


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None  # the backend's name of its LoRA adapter; None: the base model
    stream: OutputStream
    text: OutputText
    generator: torch.Generator | None
    arrival: float = field(default_factory=time.perf_counter)
    output_ids: list[int] = field(default_factory=list)
    last_token_at: float = 0.0
    done: bool = False


class Engine:
    def __init__(self, backend, tokenizer, eos_ids: frozenset[int], pad_id: int, max_batch_size: int, metrics: ServeMetrics):
        self.backend, self.tokenizer, self.eos_ids, self.pad_id = backend, tokenizer, eos_ids, pad_id
        self.max_batch_size, self.metrics = max_batch_size, metrics
        self._cv = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._controls: list[tuple[Callable[[], object], Future]] = []
        self._retired: set[str] = set()  # adapters no longer served, deleted once no sequence uses them
        self._stopping = False
        # The running batch: its sequences (rows), KV cache, attention mask [rows, T] and each row's newest token.
        self._running: list[Sequence] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        # A step's Outputs, handed to the event loop at once after the step: one cross-thread wake-up per
        # step instead of one per sequence and token (each one a write to the loop's self-pipe).
        self._outbox: list[tuple[OutputStream, Output]] = []
        self._thread = threading.Thread(target=self._run, name="llmops-engine", daemon=True)
        self._stats = {"since": time.monotonic(), "prompt": 0, "generated": 0, "max_batch": 0}

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None) -> OutputStream:
        stream = OutputStream(asyncio.get_running_loop())
        seq = Sequence(prompt_ids, params, adapter, stream, OutputText(self.tokenizer, prompt_ids, params.stop), params.generator())
        with self._cv:
            self._waiting.append(seq)
            self.metrics.num_requests_waiting.set(len(self._waiting))
            self._cv.notify()
        return stream

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the worker thread between two steps (model changes: adapters); its result as a Future."""
        future: Future = Future()
        with self._cv:
            self._controls.append((fn, future))
            self._cv.notify()
        return future

    def retire_adapter(self, name: str) -> None:
        """Delete adapter `name` from the model once no waiting or running sequence uses it."""
        with self._cv:
            self._retired.add(name)
            self._cv.notify()

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._controls or self._running or self._retired):
                    self._cv.wait()
                if self._stopping:
                    break
                controls, self._controls = self._controls, []
                admitted = self._admit()
            for fn, future in controls:
                if not future.set_running_or_notify_cancel():  # its caller gave up waiting
                    continue
                try:
                    with torch.no_grad():
                        result = fn()
                except BaseException as error:  # noqa: BLE001 - the caller gets it as the future's exception
                    future.set_exception(error)
                else:
                    future.set_result(result)
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
            except Exception as error:  # noqa: BLE001 - one bad step fails its requests, never the server
                victims = [s for s in dict.fromkeys(admitted + self._running) if not s.done]
                log.exception("a model step failed; failing the %d requests in it", len(victims))
                self._running, self._cache, self._mask, self._last = [], None, None, None
                self._fail(victims, error)
            self._send()
            self._delete_retired()
            self.metrics.num_requests_running.set(len(self._running))
            self._log_stats()
        self._fail([s for s in [*self._running, *self._waiting] if not s.done], RuntimeError("the server is shutting down"))
        self._send()

    def _put(self, seq: Sequence, output: Output) -> None:
        self._outbox.append((seq.stream, output))

    def _send(self) -> None:
        outbox, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for stream, output in outbox:
            by_loop.setdefault(stream.loop, []).append((stream, output))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: the server is going away, no one is listening
                pass

    def _admit(self) -> list[Sequence]:
        """Waiting sequences that fit in the batch (called under the lock); aborted ones are dropped."""
        admitted = []
        while self._waiting and len(self._running) + len(admitted) < self.max_batch_size:
            seq = self._waiting.popleft()
            if seq.stream.aborted:
                self._finish(seq, "abort", None, "")
            elif seq.adapter is not None and seq.adapter not in self.backend.adapters:
                self._fail([seq], LookupError("its adapter was unloaded before it started"))
            else:
                admitted.append(seq)
        self.metrics.num_requests_waiting.set(len(self._waiting))
        return admitted

    def _prefill(self, seqs: list[Sequence]) -> None:
        now = time.perf_counter()
        for seq in seqs:
            self.metrics.request_queue_time.observe(now - seq.arrival)
            self.metrics.prompt_tokens.inc(len(seq.prompt_ids))
            self._stats["prompt"] += len(seq.prompt_ids)
        ids, mask, positions = kv_cache.prompt_batch([s.prompt_ids for s in seqs], self.pad_id)
        logits, cache = self.backend.forward(ids, mask, positions, None, [s.adapter for s in seqs], last_only=True)
        self.metrics.iteration_tokens.observe(int(mask.sum()))
        tokens = next_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs])
        self._advance(seqs, tokens)
        keep = [i for i, seq in enumerate(seqs) if not seq.done]
        if not keep:
            return
        last = torch.tensor([tokens[i] for i in keep], dtype=torch.long)
        if len(keep) == len(seqs) and not self._running:
            self._running, self._cache, self._mask, self._last = [seqs[i] for i in keep], cache, mask, last
            return
        layers = self.backend.layers(cache)
        if len(keep) < len(seqs):
            layers, mask = kv_cache.select(layers, mask, keep)
        if self._running:
            layers, mask = kv_cache.concat(self.backend.layers(self._cache), self._mask, layers, mask)
            last = torch.cat([self._last, last])
        self._running = self._running + [seqs[i] for i in keep]
        self._cache, self._mask, self._last = self.backend.cache(layers), mask, last

    def _decode(self) -> None:
        self._drop_finished()  # aborted by their clients since the last step
        if not self._running:
            return
        rows = len(self._running)
        mask = torch.cat([self._mask, torch.ones((rows, 1), dtype=self._mask.dtype)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        logits, cache = self.backend.forward(self._last[:, None], mask, positions, self._cache,
                                             [s.adapter for s in self._running], last_only=False)
        self.metrics.batch_size.observe(rows)
        self.metrics.iteration_tokens.observe(rows)
        self._stats["max_batch"] = max(self._stats["max_batch"], rows)
        tokens = next_tokens(logits, [s.params for s in self._running], [s.generator for s in self._running])
        self._cache, self._mask, self._last = cache, mask, torch.tensor(tokens, dtype=torch.long)
        self._advance(self._running, tokens)
        self._drop_finished()

    def _drop_finished(self) -> None:
        for seq in self._running:
            if seq.stream.aborted and not seq.done:
                self._finish(seq, "abort", None, "")
        keep = [i for i, seq in enumerate(self._running) if not seq.done]
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._cache, self._mask, self._last = [], None, None, None
            return
        layers, self._mask = kv_cache.select(self.backend.layers(self._cache), self._mask, keep)
        self._cache = self.backend.cache(layers)
        self._last = self._last[torch.tensor(keep)]
        self._running = [self._running[i] for i in keep]

    def _advance(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """Each sequence's new token: latency metrics, text, stop conditions, and its Output."""
        now = time.perf_counter()
        for seq, token in zip(seqs, tokens):
            if seq.output_ids:
                gap = now - seq.last_token_at
                self.metrics.inter_token_latency.observe(gap)
                self.metrics.time_per_output_token.observe(gap)
            else:
                self.metrics.time_to_first_token.observe(now - seq.arrival)
            seq.last_token_at = now
            seq.output_ids.append(token)
            self.metrics.generation_tokens.inc()
            self._stats["generated"] += 1
            finish = stop = None
            if token in self.eos_ids:
                finish, stop = "stop", seq.text.flush()
            else:
                stop = seq.text.add(token)
                if stop is not None:
                    finish = "stop"
                elif len(seq.output_ids) >= seq.params.max_tokens:
                    stop = seq.text.flush()
                    finish = "stop" if stop is not None else "length"
            delta = seq.text.take(final=finish is not None)
            if finish:
                self._finish(seq, finish, stop, delta)
            elif delta:
                self._put(seq, Output(delta, None, None, len(seq.prompt_ids), len(seq.output_ids)))

    def _finish(self, seq: Sequence, reason: str, stop: str | None, delta: str) -> None:
        seq.done = True
        self.metrics.request_success[reason].inc()
        if reason != "abort":
            self.metrics.e2e_request_latency.observe(time.perf_counter() - seq.arrival)
        self._put(seq, Output(delta, reason, stop, len(seq.prompt_ids), len(seq.output_ids), token_ids=list(seq.output_ids)))

    def _fail(self, seqs: list[Sequence], error: BaseException) -> None:
        message = f"The engine failed this request: {type(error).__name__}: {str(error)[:300]}"
        for seq in seqs:
            seq.done = True
            self._put(seq, Output("", None, None, len(seq.prompt_ids), len(seq.output_ids), error=message))

    def _delete_retired(self) -> None:
        with self._cv:
            in_use = {s.adapter for s in self._running} | {s.adapter for s in self._waiting}
            idle = self._retired - in_use
            self._retired -= idle
        for name in idle:
            try:
                with torch.no_grad():
                    self.backend.remove_adapter(name)
            except Exception:  # noqa: BLE001 - it is no longer served either way; the engine must go on
                log.exception("deleting adapter %s from the model failed", name)
            else:
                log.info("adapter %s deleted from the model", name)

    def _log_stats(self) -> None:
        """A vLLM-like throughput line every STATS_EVERY_SECONDS while there is work."""
        stats, now = self._stats, time.monotonic()
        elapsed = now - stats["since"]
        if elapsed < STATS_EVERY_SECONDS:
            return
        if stats["prompt"] or stats["generated"]:
            log.info("prompt throughput %.1f tokens/s, generation throughput %.1f tokens/s, running %d, waiting %d, "
                     "largest batch %d", stats["prompt"] / elapsed, stats["generated"] / elapsed, len(self._running),
                     len(self._waiting), stats["max_batch"])
        self._stats = {"since": now, "prompt": 0, "generated": 0, "max_batch": 0}
