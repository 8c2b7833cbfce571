"""llm-compressor's methods on the tiny Llama, in the compress venv: checkpoint, reload, logits error.

Each method's stage runs on its own (a driver in the venv), then its output is loaded back with
transformers exactly as the pipeline's evaluation loads it, and its logits are compared with the
unquantized model's on the held-out records (never seen in calibration). The runner runs the
methods vLLM serves most, and refuses bad calibration input with exit 2.

The error is relative, ||logits - reference|| / ||reference|| over every real token, and bounded:
- w8a8-int8 under 2 %: INT8 weights (one scale per output channel) and INT8 per-token activations
  each cost about 0.5 % of a row's range (half a step of 1/255 over sqrt(3)); 2 % is 3x what that
  compounds to through the 14 quantized layers (0.6 % measured).
- w4a16, gptq and awq under round-to-nearest: each must beat plain rounding to the same INT4
  format (same groups, same symmetry), computed here on the same model, as GPTQ's error
  compensation and AWQ's scales exist to do. A fixed figure would not say whether they work.
- fp8 under 10 %: E4M3 (3 mantissa bits) rounds every weight and activation to within 2^-4
  relative, 3.6 % RMS each; 10 % leaves room for the two to compound over the layers, and no more.
The tiny Llama is untrained (random weights, a head scaled up), the hardest case for quantization:
no outlier structure that SmoothQuant or AWQ could exploit, logits close to each other.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import python_of, run_compress

from llmops_runners.errors import EXIT_BAD_INPUT, EXIT_OK

CALIBRATION_SAMPLES = 32
BOUNDS = {"w8a8-int8": 0.02, "fp8": 0.10}  # the INT4 methods are bounded by round-to-nearest instead
METHODS = ["w8a8-int8", "w4a16", "gptq", "awq", "fp8"]
WEIGHTS = {  # what each method's checkpoint must declare: (type, bits, strategy, group size, symmetric)
    "w8a8-int8": ("int", 8, "channel", None, True),
    "w4a16": ("int", 4, "group", 64, True),  # the tiny Llama's layers are 64 and 128 wide: groups of 128 cannot be
    "gptq": ("int", 4, "group", 64, True),  # the same recipe as w4a16
    "awq": ("int", 4, "group", 64, False),  # asymmetric, as AWQ is published
    "fp8": ("float", 8, "channel", None, True),
}
ACTIVATIONS = {"w8a8-int8": ("int", 8), "fp8": ("float", 8)}  # dynamic, per token; the others keep 16-bit activations


def in_venv(code: str, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(python_of("compress")), "-c", code, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


STAGE = r"""
import json, sys, time
from pathlib import Path
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmops_runners.compress import examples
from llmops_runners.compress.config import CompressConfig
from llmops_runners.compress.models import ModelRef
from llmops_runners.compress.quantize_llmc import run
from llmops_runners.compress.stages import StageContext

source, calibration, held_out, out, method, samples = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5], int(sys.argv[6])
quantize = {"method": method} if method == "fp8" else {"method": method, "calibration": {"path": calibration, "samples": samples}}
config = CompressConfig.model_validate({"model": {"path": str(source)}, "output": {"path": str(out)}, "maxSeqLength": 64,
                                        "stages": [{"quantize": quantize}]})
steps = []
started = time.monotonic()
outcome = run(config.stages[0].quantize, ModelRef(source, "causal-lm"), StageContext(config, 0, "quantize-0", out, lambda s, t: steps.append([s, t])))
seconds = time.monotonic() - started

tokenizer = AutoTokenizer.from_pretrained(source)
enc = tokenizer(examples.texts("causal-lm", tokenizer, held_out, 64), return_tensors="pt", padding=True, add_special_tokens=False)
reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # as the pipeline's evaluation loads it
with torch.no_grad():
    want, got = reference(**enc).logits, reloaded(**enc).logits.float()
real = enc["attention_mask"].bool()
want, got = want[real], got[real]

def round_to_nearest(w, group, symmetric):  # INT4, no calibration: the baseline GPTQ and AWQ must beat
    g = w.reshape(w.shape[0], -1, group)
    if symmetric:
        scale = g.abs().amax(-1, keepdim=True) / 7
        return (torch.clamp(torch.round(g / scale), -8, 7) * scale).reshape(w.shape)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (high - low) / 15
    zero = torch.round(-low / scale)
    return ((torch.clamp(torch.round(g / scale) + zero, 0, 15) - zero) * scale).reshape(w.shape)

quantization = json.loads((out / "config.json").read_text()).get("quantization_config")
rtn_error = None
(weights,) = [g["weights"] for g in quantization["config_groups"].values()]
if weights["num_bits"] == 4:
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(round_to_nearest(module.weight, weights["group_size"], weights["symmetric"]))
        rounded = reference(**enc).logits[real]
    rtn_error = float((rounded - want).norm() / want.norm())
with safe_open(str(out / "model.safetensors"), "pt") as f:
    dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
print(json.dumps({
    "format": outcome.model.format, "path": str(outcome.model.path), "metrics": outcome.metrics, "steps": steps, "seconds": seconds,
    "quantization": quantization, "dtypes": dtypes, "rtnError": rtn_error,
    "bytes": (out / "model.safetensors").stat().st_size, "sourceBytes": (source / "model.safetensors").stat().st_size,
    "relError": float((got - want).norm() / want.norm()), "maxAbsError": float((got - want).abs().max()),
    "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean()), "tokens": int(real.sum()),
    "tokenizer": (out / "tokenizer.json").is_file()}))
"""


@pytest.fixture(scope="module")
def quantized(tiny_lm, tmp_path_factory):
    """Each method's stage output and measurements, made once for the tests that read them."""
    made = {}

    def make(method: str) -> dict:
        if method not in made:
            out = tmp_path_factory.mktemp(method) / "out"
            made[method] = in_venv(STAGE, str(tiny_lm["model"]), str(tiny_lm["train"]), str(tiny_lm["held_out"]),
                                   str(out), method, str(CALIBRATION_SAMPLES))
        return made[method]
    return make


@pytest.mark.parametrize("method", METHODS)
def test_a_compressed_tensors_checkpoint_that_reloads_with_logits_close_to_the_original(method, quantized):
    found = quantized(method)
    bound = BOUNDS.get(method, found["rtnError"])
    print(f"\n{method}: relative logits error {found['relError']:.4f} (bound {bound:.4f}), max abs {found['maxAbsError']:.3f}, "
          f"top-1 agreement {found['top1']:.3f} over {found['tokens']} tokens; {found['sourceBytes']} -> {found['bytes']} bytes "
          f"in {found['seconds']:.1f} s")
    q = found["quantization"]
    assert found["format"] == "compressed-tensors" and q["quant_method"] == "compressed-tensors"
    assert q["quantization_status"] == "compressed" and q["ignore"] == ["lm_head"]
    (group,) = q["config_groups"].values()
    w = group["weights"]
    assert (w["type"], w["num_bits"], w["strategy"], w["group_size"], w["symmetric"]) == WEIGHTS[method]
    a = group["input_activations"]
    assert (a and (a["type"], a["num_bits"], a["dynamic"], a["strategy"])) == (
        (*ACTIVATIONS[method], True, "token") if method in ACTIVATIONS else None)

    # Stored quantized: packed INT4, INT8 or FP8 tensors with scales; lm_head and the embeddings stay float.
    dtypes = found["dtypes"]
    stored = {"w4a16": ("weight_packed", "I32"), "gptq": ("weight_packed", "I32"), "awq": ("weight_packed", "I32"),  # 8 INT4 per int32
              "w8a8-int8": ("weight", "I8"), "fp8": ("weight", "F8_E4M3")}[method]
    assert dtypes[f"model.layers.0.mlp.down_proj.{stored[0]}"] == stored[1]
    assert "model.layers.0.mlp.down_proj.weight_scale" in dtypes
    assert ("model.layers.0.mlp.down_proj.weight_zero_point" in dtypes) == (method == "awq")
    assert dtypes["lm_head.weight"] == dtypes["model.embed_tokens.weight"] == "F32"
    assert found["bytes"] < found["sourceBytes"] and found["tokenizer"]

    assert found["relError"] < bound
    assert found["metrics"]["quantizedLayers"] == 14 and found["steps"][-1] == [3, 3]
    if method == "fp8":
        assert "calibrationSamples" not in found["metrics"]  # dynamic: nothing to calibrate
    else:
        assert found["metrics"]["calibrationSamples"] == CALIBRATION_SAMPLES and found["metrics"]["calibrationTokens"] > CALIBRATION_SAMPLES
    if method in ("w4a16", "gptq", "awq"):
        assert found["metrics"]["int4GroupSize"] == 64


def test_eight_bits_are_closer_than_four(quantized):
    assert quantized("w8a8-int8")["relError"] < quantized("w4a16")["relError"] / 2


GROUP_SIZES = r"""
import json, torch
from llmops_runners.compress.quantize_llmc import int4_group_size
def widths(*ins):
    return torch.nn.ModuleDict({f"l{i}": torch.nn.Linear(n, 8) for i, n in enumerate(ins)} | {"lm_head": torch.nn.Linear(100, 8)})
print(json.dumps({"llama-1b": int4_group_size(widths(2048, 5632), ["lm_head"]), "tiny": int4_group_size(widths(64, 128), ["lm_head"]),
                  "96": int4_group_size(widths(96, 192), ["lm_head"]), "odd": int4_group_size(widths(100), ["lm_head"]),
                  "head-counted": int4_group_size(widths(2048), [])}))
"""


def test_int4_groups_divide_every_quantized_layer():
    sizes = in_venv(GROUP_SIZES)
    # 128 where it fits (a real model's widths), smaller where it must, one group per row where none fits;
    # an ignored layer's width does not count.
    assert sizes == {"llama-1b": 128, "tiny": 64, "96": 32, "odd": -1, "head-counted": -1}


def lm_config(tiny_lm, out, quantize: dict, evaluation: bool = True) -> dict:
    config = {"model": {"path": str(tiny_lm["model"])}, "stages": [{"quantize": quantize}], "output": {"path": str(out)}, "maxSeqLength": 64}
    if evaluation:
        config["evaluation"] = {"path": str(tiny_lm["held_out"]), "metric": "perplexity", "maxAccuracyDrop": 0.05}
    return config


@pytest.mark.parametrize("method", [
    "w8a8-int8",
    "w4a16",
])
def test_the_runner_writes_a_checkpoint_within_the_perplexity_budget(method, tiny_lm, tmp_path):
    quantize = {"method": method, "calibration": {"path": str(tiny_lm["train"]), "samples": CALIBRATION_SAMPLES}}
    run = run_compress(lm_config(tiny_lm, tmp_path / "out", quantize), tmp_path)
    assert run.exit_code == EXIT_OK, run.stderr[-3000:]
    gate = run.report["qualityGate"]
    print(f"\n{method}: perplexity {gate['before']:.2f} -> {gate['after']:.2f}, greedy agreement {gate.get('greedyAgreement')}")
    assert gate["passed"] and abs(gate["drop"]) <= 0.05
    manifest = json.loads((run.output / "compression.json").read_text())
    assert manifest["format"] == "compressed-tensors"
    assert json.loads((run.output / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
    assert run.stage("quantize-0")["metrics"]["calibrationSamples"] == CALIBRATION_SAMPLES


@pytest.mark.parametrize(("case", "expected"), [
    ("no-calibration", "needs calibration data"),
    ("calibration-without-text", "neither 'instruction'/'output', 'messages' nor 'text'"),
])
def test_unusable_calibration_exits_2_with_one_sentence(case, expected, tiny_lm, tmp_path):
    quantize = {"method": "w8a8-int8"}
    if case == "calibration-without-text":  # only the stage itself can tell: the file exists
        bad = tmp_path / "calibration.jsonl"
        bad.write_text('{"prompt": "What colour is the apple?"}\n')
        quantize["calibration"] = {"path": str(bad)}
    run = run_compress(lm_config(tiny_lm, tmp_path / "out", quantize, evaluation=False), tmp_path)
    assert run.exit_code == EXIT_BAD_INPUT, run.stderr[-2000:]
    message = run.report["message"]
    assert run.report["reason"] == "InvalidInput" and expected in message, message
    assert "\n" not in message and message.endswith(".")
    assert not (tmp_path / "out" / "config.json").exists()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="vLLM serves compressed-tensors checkpoints on CUDA GPUs only; this machine has none")
@pytest.mark.parametrize("method", ["w8a8-int8", "w4a16"])
def test_vllm_loads_and_generates(method, tmp_path):
    """A Llama 256 wide (vLLM's INT8 and Marlin INT4 kernels want widths of 128 and more), quantized and served."""
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_tiny_model

    vllm_python = os.environ.get("VLLM_PYTHON", str(python_of("compress")))
    if subprocess.run([vllm_python, "-c", "import vllm"], capture_output=True).returncode:
        pytest.skip(f"{vllm_python} has no vLLM: set VLLM_PYTHON to a Python that has it")
    model = make_tiny_model(tmp_path / "model", corpus_texts(), hidden=256)
    data = write_jsonl(tmp_path / "train.jsonl", instruction_examples()[0])
    config = {"model": {"path": str(model)}, "output": {"path": str(tmp_path / "out")}, "maxSeqLength": 64,
              "stages": [{"quantize": {"method": method, "calibration": {"path": str(data), "samples": 16}}}]}
    run = run_compress(config, tmp_path)
    assert run.exit_code == EXIT_OK, run.stderr[-3000:]
    code = ("import sys, vllm; llm = vllm.LLM(sys.argv[1], enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=128); "
            "out = llm.generate(['What colour is the apple?'], vllm.SamplingParams(max_tokens=4, temperature=0)); "
            "print(len(out[0].outputs[0].token_ids))")
    done = subprocess.run([vllm_python, "-c", code, str(run.output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) == 4
