"""The continuous-batching engine itself, in the serving venv: what it generates for requests that
join and leave a running batch (and share it across adapters) is, token for token, what
transformers / peft generate for each request alone."""
from __future__ import annotations

import json

from .serve_support import in_serve_venv

# Requests with different prompt lengths, lengths to generate and adapters, into a batch of at most 3:
# they wait, join mid-flight (their cache padded to the batch's), and leave at different steps (the
# batch's cache shrinks). Then again with an end-of-sequence token made up from the reference (a token
# the model really produces), to see sequences stop on it; and again with transformers building the
# attention mask from the 2-D one (the path of architectures the engine does not build masks for).
ENGINE = r"""
import asyncio, json, sys
import torch
torch.set_num_threads(1)
from llmops_runners.hf_compat import readable_config
from llmops_runners.serve.config import ServeConfig
from llmops_runners.serve.engine import Engine
from llmops_runners.serve.loading import load
from llmops_runners.serve.metrics import ServeMetrics
from llmops_runners.serve.sampling import SamplingParams
from peft import PeftModel
from transformers import AutoModelForCausalLM

spec = json.loads(sys.argv[1])
jobs = spec["jobs"]  # [prompt ids, max tokens, adapter or null, delay in s]

def reference(ids, max_tokens, adapter):
    model = AutoModelForCausalLM.from_pretrained(spec["model"], config=readable_config(spec["model"]), dtype=torch.float32).eval()
    if adapter:
        model = PeftModel.from_pretrained(model, spec["adapters"][adapter]).eval()
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()

served = load(ServeConfig.model_validate({"model": {"path": spec["model"]}, "servedModelName": "tiny"}))
for name, path in spec["adapters"].items():
    served.backend.add_adapter(name, path)

def run(eos_ids):
    metrics = ServeMetrics("tiny")
    engine = Engine(served.backend, served.tokenizer, frozenset(eos_ids), served.pad_id, 3, metrics)
    engine.start()

    async def one(ids, max_tokens, adapter, delay):
        await asyncio.sleep(delay)
        stream = engine.submit(ids, SamplingParams(max_tokens, temperature=0), adapter)
        while True:
            out = await stream.get()
            if out.finish_reason or out.error:
                return {"ids": out.token_ids, "finish": out.finish_reason, "error": out.error}

    async def all_jobs():
        return await asyncio.gather(*[one(*job) for job in jobs])

    try:
        results = asyncio.run(all_jobs())
    finally:
        engine.stop()
    sizes = {s.labels["le"]: s.value for s in metrics.registry.collect() for s in s.samples
             if s.name == "llmops_serve_batch_size_bucket"}
    return results, sizes

wanted = [reference(*job[:3]) for job in jobs]
never = served.eos_ids - set(token for w in wanted for token in w)
mask_kind = served.backend._mask_kind
plain, sizes = run(never)
made_up_eos = wanted[0][2]
stopped, _ = run({made_up_eos})
served.backend._mask_kind = None  # transformers' own mask construction from the 2-D mask (other architectures)
fallback, _ = run(never)
print(json.dumps({"wanted": wanted, "plain": plain, "sizes": sizes, "eos": made_up_eos, "stopped": stopped,
                  "maskKind": mask_kind, "fallback": fallback}))
"""


def test_batched_generation_is_each_requests_own_greedy_generation(tiny):
    prompts = [[300, 10, 20], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [100], [42, 43, 44, 45, 46],
               [250, 251, 252, 253, 254, 255, 256, 257, 258], [7, 7, 7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [88, 99]]
    lengths = [12, 4, 20, 7, 15, 1, 9, 16]
    adapters = [None, "support", "billing", None, "support", None, "billing", "support"]
    # Five at once into a batch of 3: two wait and join when job 1 (4 tokens) leaves, while jobs 0 and 2 still run;
    # the last three arrive later, into whatever is running then.
    delays = [0, 0, 0, 0, 0, 0.02, 0.05, 0.1]
    spec = {"model": str(tiny["model"]), "adapters": {"support": str(tiny["support"]), "billing": str(tiny["billing"])},
            "jobs": [list(job) for job in zip(prompts, lengths, adapters, delays)]}
    found = in_serve_venv(ENGINE, json.dumps(spec))

    assert found["maskKind"] == "boolean"  # the engine builds the Llama's 4-D mask itself (sdpa)
    for run in ("plain", "fallback"):
        for job, want, got in zip(spec["jobs"], found["wanted"], found[run]):
            assert got["error"] is None and got["finish"] == "length", (run, job)
            assert got["ids"] == want, (run, job)
    # The batch was full (steps with 3 sequences) and never larger than its maximum, 3.
    sizes = found["sizes"]
    assert sizes["2.0"] < sizes["4.0"] == sizes["+Inf"]

    eos = found["eos"]
    for job, want, got in zip(spec["jobs"], found["wanted"], found["stopped"]):
        expected = want[:want.index(eos) + 1] if eos in want else want
        assert got["ids"] == expected, job
        assert got["finish"] == ("stop" if eos in want else "length")
