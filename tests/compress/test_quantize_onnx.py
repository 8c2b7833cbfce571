"""onnx-dynamic-int8: Optimum's ONNX export and ONNX Runtime dynamic INT8, in the compress-onnx venv.

The MiniLM classifier goes through the runner (the real contract); what the runner wrote is then
opened with ONNX Runtime and Optimum's ORT classes, and its accuracy compared with the PyTorch
model's. The tiny causal LM runs the stage on its own: this venv's transformers 4.x cannot read
the tiny LM's tokenizer (saved by transformers 5), which the pipeline's measurements need, and the
stage needs no tokenizer (its latency runs on token ids).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import python_of, run_compress

from llmops_runners.errors import EXIT_OK

MAX_ACCURACY_DROP = 0.015  # 1.5 points


def in_venv(code: str, *args: str, family: str = "compress-onnx") -> dict:
    """Run `code` in the family's venv; it prints one JSON object on its last line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(python_of(family)), "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Opens the runner's output as a deployment would: ONNX Runtime alone, then Optimum's ORT class.
INSPECT_CLASSIFIER = r"""
import collections, json, sys
import onnx, onnxruntime
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer

out, data = sys.argv[1], sys.argv[2]
session = onnxruntime.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
graph = onnx.load(f"{out}/model.onnx").graph
int8 = sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in graph.initializer)
model = ORTModelForSequenceClassification.from_pretrained(out)
tokenizer = AutoTokenizer.from_pretrained(out)
records = [json.loads(line) for line in open(data)]
enc = tokenizer([r["text"] for r in records], padding=True, return_tensors="pt")
predicted = model(**enc).logits.argmax(-1).tolist()
print(json.dumps({"inputs": [i.name for i in session.get_inputs()], "ops": collections.Counter(n.op_type for n in graph.node),
                  "classifier": next(n.op_type for n in graph.node if n.name.startswith("/classifier/")),
                  "int8Initializers": int8, "accuracy": sum(p == r["label"] for p, r in zip(predicted, records)) / len(records)}))
"""


def test_minilm_int8_is_a_quarter_of_the_fp32_onnx_and_loses_under_one_and_a_half_points(classifier, tmp_path):
    from tests.helpers.classifier import accuracy

    config = {"model": {"path": str(classifier["model"])}, "stages": [{"quantize": {"method": "onnx-dynamic-int8"}}],
              "evaluation": {"path": str(classifier["eval"]), "metric": "accuracy", "maxAccuracyDrop": MAX_ACCURACY_DROP},
              "output": {"path": str(tmp_path / "out")}}
    run = run_compress(config, tmp_path, family="compress-onnx")
    assert run.exit_code == EXIT_OK, run.stderr[-3000:]
    metrics = run.stage("quantize-0")["metrics"]
    ratio = metrics["int8OnnxBytes"] / metrics["fp32OnnxBytes"]
    print(f"\nINT8 {metrics['int8OnnxBytes'] / 2**20:.1f} MiB / FP32 ONNX {metrics['fp32OnnxBytes'] / 2**20:.1f} MiB = {ratio:.3f}; "
          f"ONNX Runtime latency FP32 {metrics['fp32OnnxLatencyMs']:.1f} ms, INT8 {metrics['int8OnnxLatencyMs']:.1f} ms "
          f"({'u8s8' if metrics['int8SignedWeights'] else 'u8u8'} kernels)")
    assert ratio <= 0.35
    assert metrics["fp32OnnxLatencyMs"] > 0 and metrics["int8OnnxLatencyMs"] > 0

    # Only the INT8 model is left: one graph, its config and the input's tokenizer, no FP32 scratch.
    files = {f.name for f in run.output.iterdir()}
    assert [f for f in files if f.endswith(".onnx")] == ["model.onnx"] and {"config.json", "tokenizer.json"} <= files
    assert not list(run.output.parent.glob("*.fp32")) and not (run.output / ".stages").exists()
    assert json.loads((run.output / "compression.json").read_text())["format"] == "onnx"

    found = in_venv(INSPECT_CLASSIFIER, str(run.output), str(classifier["eval"]))
    # INT8: 6 layers x (q, k, v, attention out, FFN in, FFN out) and the pooler. FP32: the attention's own two
    # MatMuls of activations per layer, and the classifier (a sequence classifier's default quantize.ignore).
    assert found["ops"]["MatMulInteger"] == 6 * 6 + 1 and found["ops"]["MatMul"] == 6 * 2 + 1
    assert found["classifier"] == "MatMul"
    assert found["ops"].get("DynamicQuantizeLinear", 0) > 0 and found["int8Initializers"] > 0
    assert "input_ids" in found["inputs"]
    records = [json.loads(line) for line in classifier["eval"].read_text().splitlines()]
    before = accuracy(classifier["model"], records)  # the PyTorch model, in the test venv
    print(f"accuracy: PyTorch {before:.4f}, ONNX INT8 {found['accuracy']:.4f}")
    assert before - found["accuracy"] <= MAX_ACCURACY_DROP
    gate = run.report["qualityGate"]  # the runner's own measurement agrees
    assert gate["passed"] and gate["before"] - gate["after"] <= MAX_ACCURACY_DROP


# The stage alone on the tiny Llama, then Optimum's ORTModelForCausalLM: logits of PROMPTS, and greedy generation.
TINY_LM_STAGE = r"""
import json, sys
from pathlib import Path
import onnx, torch
from llmops_runners.compress.config import CompressConfig, QuantizeSettings
from llmops_runners.compress.models import ModelRef
from llmops_runners.compress.quantize_onnx import load_onnx, run
from llmops_runners.compress.stages import StageContext

source, out, prompts = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
config = CompressConfig.model_validate({"model": {"path": str(source)}, "output": {"path": str(out)},
                                        "stages": [{"quantize": {"method": "onnx-dynamic-int8"}}]})
steps = []
outcome = run(QuantizeSettings(method="onnx-dynamic-int8"), ModelRef(source, "causal-lm"),
              StageContext(config, 0, "quantize-0", out, lambda step, total: steps.append([step, total])))
nodes = {n.name: n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
model = load_onnx(outcome.model)
logits = [model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0].tolist() for ids in prompts]
generated = model.generate(input_ids=torch.tensor([prompts[0]]), attention_mask=torch.ones(1, len(prompts[0]), dtype=torch.long),
                           max_new_tokens=8, do_sample=False, pad_token_id=0)
print(json.dumps({"format": outcome.model.format, "path": str(outcome.model.path), "metrics": outcome.metrics, "steps": steps,
                  "files": sorted(p.name for p in out.iterdir()), "lmHead": nodes.get("/lm_head/MatMul"),
                  "matMulInteger": sum(op == "MatMulInteger" for op in nodes.values()), "logits": logits,
                  "generated": generated[0].tolist(), "class": type(model).__name__}))
"""
QK_SCALE = 8.0  # attention logits x64
PROMPTS = [[1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110], [1, 77, 12, 250, 3, 5, 7, 9, 11, 13], [1, 300, 301, 302, 8, 9, 10, 11, 12, 13, 14, 15]]


def test_tiny_causal_lm_exports_quantizes_and_generates(tiny_lm, tmp_path):
    """The tiny Llama with Llama 3's rope_theta, as transformers 5 saves it (inside rope_parameters).

    Its query and key weights are scaled up: untrained, its attention is near uniform, blind to
    positions, and no RoPE setting would change its logits.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    source, same_rope = tmp_path / "model", tmp_path / "model-default-rope"
    shutil.copytree(tiny_lm["model"], source)
    weights = load_file(source / "model.safetensors")
    save_file({k: w * QK_SCALE if k.endswith(("q_proj.weight", "k_proj.weight")) else w for k, w in weights.items()},
              source / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(source, same_rope)
    config = json.loads((source / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 500000.0
    (source / "config.json").write_text(json.dumps(config))

    found = in_venv(TINY_LM_STAGE, str(source), str(tmp_path / "out"), json.dumps(PROMPTS))
    assert found["format"] == "onnx" and found["class"] == "ORTModelForCausalLM"
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(found["files"])
    assert not (tmp_path / "out.fp32").exists() and not (tmp_path / "out.source").exists()
    # 2 layers x 7 projections are INT8. Left in FP32: lm_head (a causal LM's default quantize.ignore),
    # and the MatMuls of two activations (attention scores and values, rotary angles: 2 x 2 + 1).
    assert found["matMulInteger"] == 14 and found["lmHead"] == "MatMul" and found["metrics"]["nodesLeftFp32"] == 1 + 5
    assert found["steps"][-1] == [3, 3]

    # Against the PyTorch model as transformers 5 (this venv) reads it. Relative logits error: INT8 weights
    # (per-channel scales) and activations (one scale per batch) each cost about 0.5 % (half a step of 1/255
    # of the range, over sqrt(3)); over 14 quantized matmuls that compounds to ~2 % (0.5 % x sqrt(14));
    # 5 % leaves 2.5x of it. The same model with the default rope_theta (what transformers 4 would read
    # from this config unaided) must be much further off, or the comparison could not see the difference.
    def logits(path):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            return [model(input_ids=torch.tensor([ids])).logits[0] for ids in PROMPTS]

    def error(got, want):
        return max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))

    reference = logits(source)
    onnx_error = error([torch.tensor(x) for x in found["logits"]], reference)
    wrong_rope_error = error(logits(same_rope), reference)
    print(f"\nrelative logits error of the INT8 ONNX tiny Llama: {onnx_error:.4f} (rope_theta 10000 instead: {wrong_rope_error:.4f})")
    assert onnx_error < 0.05 < wrong_rope_error

    prompt, generated = PROMPTS[0], found["generated"]
    assert generated[:len(prompt)] == prompt and len(generated) == len(prompt) + 8
    assert all(0 <= t < 400 for t in generated[len(prompt):])


PICK_KERNELS = r"""
import json
from llmops_runners.compress import quantize_onnx as q
picked = {}
for flags in (["avx2", "avx512_vnni"], ["avx2", "avx_vnni"], ["avx2"]):
    q.cpu_flags = lambda flags=flags: set(flags)
    config, kernels = q._quantization_config(["/lm_head/MatMul"])
    picked["+".join(flags)] = [kernels, config.weights_dtype.name, config.reduce_range, config.per_channel, config.nodes_to_exclude]
print(json.dumps(picked))
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the x86-64 kernel choice; ARM64 always takes u8s8")
def test_signed_weights_only_where_vnni_makes_them_exact():
    picked = in_venv(PICK_KERNELS)
    assert picked["avx2+avx512_vnni"] == ["u8s8", "QInt8", False, True, ["/lm_head/MatMul"]]
    assert picked["avx2+avx_vnni"][0] == "u8s8"
    assert picked["avx2"][:2] == ["u8u8", "QUInt8"]
