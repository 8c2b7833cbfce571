"""CPU benchmark of the compression runner: size, parameters, quality retained and latency per method, beside published anchors.

Each method is a one-stage job run as its own `python -m llmops_runners.compress` process in the
venv of the image that runs it (.venv-compress for llm-compressor, pruning and distillation,
.venv-compress-onnx for ONNX Runtime), so the figures are the runner's own: every run measures its
input (the FP32 baseline) and its output with the same code, in the same process. Ratios are
output / input of that run. Figures are printed, never asserted.

Models: the tests' MiniLM classifier (all-MiniLM-L6-v2 fine-tuned on the synthetic review task,
accuracy on 300 held-out reviews) and the tests' tiny Llama (hidden 64, 2 layers, untrained:
perplexity on the held-out instructions). A stage whose module is not in the runner yet prints
"n/a (stage not available)".

    .venv/bin/python bench/compress.py
    .venv/bin/python bench/compress.py --only onnx-int8 w8a8-int8 --workdir /tmp/bench-compress   # keeps the models
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGES = REPO / "runners" / "llmops_runners" / "compress"
VENVS = {"compress": REPO / ".venv-compress", "compress-onnx": REPO / ".venv-compress-onnx"}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "minilm" or "tiny-llama"
    family: str
    module: str  # the stage's module in llmops_runners.compress
    stage: Callable[[dict, argparse.Namespace], dict]  # (data paths, args) -> the stage block
    anchor: str  # the published figure it is compared with


def _quantize(method: str, calibrated: bool = True):
    return lambda d, a: {"quantize": {"method": method, **({"calibration": {"path": str(d["train"]), "samples": 64}} if calibrated else {})}}


CASES = [
    Case("onnx-int8", "minilm", "compress-onnx", "quantize_onnx", _quantize("onnx-dynamic-int8", calibrated=False),
         "INT8 BERT-MRPC, Optimum/ORT dynamic: 0.26x size, -0.84 F1 points"),
    Case("distill-3-layers", "minilm", "compress", "distill",
         lambda d, a: {"distill": {"studentFromTeacher": {"numLayers": 3}, "datasetPath": str(d["train"]),
                                   "maxSteps": a.distill_steps, "batchSize": 16, "learningRate": 1e-4}},
         "DistilBERT: 60 % of parameters, 97 % of GLUE retained, 60 % faster"),
    Case("prune-channels-30%", "minilm", "compress", "prune",
         lambda d, a: {"prune": {"method": "channels", "sparsity": 0.3,
                                 "recovery": {"datasetPath": str(d["train"]), "steps": a.recovery_steps, "learningRate": 5e-5}}},
         "(no anchor given)"),
    Case("w8a8-int8", "tiny-llama", "compress", "quantize_llmc", _quantize("w8a8-int8"),
         "W8A8-INT (Kurtic et al. 2024): 1-3 % loss"),
    Case("w4a16", "tiny-llama", "compress", "quantize_llmc", _quantize("w4a16"), "(no anchor given)"),
    Case("fp8", "tiny-llama", "compress", "quantize_llmc", _quantize("fp8", calibrated=False),
         "FP8 (Kurtic et al. 2024): near lossless"),
]
EVALUATION = {"minilm": "accuracy", "tiny-llama": "perplexity"}


def build_models(work: Path) -> dict[str, dict]:
    """The tests' two models and their data; kept in `work`, so a second run skips the fine-tune."""
    from tests.helpers.classifier import finetune_classifier, reviews
    from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl
    from tests.helpers.tiny_models import make_tiny_model

    minilm, llama = work / "minilm", work / "tiny-llama"
    if not (minilm / "model" / "config.json").is_file():
        minilm.mkdir(parents=True, exist_ok=True)
        train = reviews(800, seed=1)
        write_jsonl(minilm / "train.jsonl", train)
        write_jsonl(minilm / "eval.jsonl", reviews(300, seed=2))
        print("fine-tuning MiniLM on the review task (a few minutes on CPU) ...", flush=True)
        finetune_classifier(minilm / "model", train)
    if not (llama / "model" / "config.json").is_file():
        llama.mkdir(parents=True, exist_ok=True)
        train, held_out = instruction_examples()
        write_jsonl(llama / "train.jsonl", train)
        write_jsonl(llama / "eval.jsonl", held_out)
        make_tiny_model(llama / "model", corpus_texts())
    return {name: {"model": root / "model", "train": root / "train.jsonl", "eval": root / "eval.jsonl"}
            for name, root in (("minilm", minilm), ("tiny-llama", llama))}


def run_case(case: Case, data: dict, work: Path, args) -> dict:
    """The stage's figures, or {"na": reason}."""
    if not (STAGES / f"{case.module}.py").is_file():
        return {"na": "n/a (stage not available)"}
    python = VENVS[case.family] / "bin" / "python"
    if not python.exists():
        return {"na": f"n/a ({python.parent.parent.name} missing: scripts/setup.sh makes it)"}
    run = work / "runs" / case.name
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "jobName": f"bench-{case.name}", "model": {"path": str(data["model"])}, "stages": [case.stage(data, args)],
        # The bench reports quality, it does not gate on it: a budget no method can exceed.
        "evaluation": {"path": str(data["eval"]), "metric": EVALUATION[case.model], "maxAccuracyDrop": 1.0, "samples": 300},
        "output": {"path": str(run / "out")}, "maxSeqLength": 128, "metrics": {"port": None},
        "terminationMessagePath": str(run / "termination-log"),
    }
    (run / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO / "runners"), os.environ.get("PYTHONPATH", "")]))
    print(f"running {case.name} on {case.model} ...", flush=True)
    done = subprocess.run([str(python), "-m", "llmops_runners.compress", "--config", str(run / "config.json")],
                          env=env, capture_output=True, text=True)
    report = json.loads((run / "termination-log").read_text()) if (run / "termination-log").exists() else {}
    if not report.get("stages"):
        return {"na": f"failed (exit {done.returncode}): {(report.get('message') or done.stderr[-300:])[:160]}"}
    return report["stages"][0]["metrics"]


def retained(m: dict, metric: str) -> float:
    before, after = m["qualityBefore"], m["qualityAfter"]
    return before / after if metric == "perplexity" else after / before  # perplexity: lower is better


def rows_for(case: Case, m: dict) -> list[list[str]]:
    metric = EVALUATION[case.model]
    if "na" in m:
        return [[case.model, case.name, m["na"] if m["na"].startswith("n/a") else "failed (below)", "", "", "", "", case.anchor]]
    size = m["sizeBytesAfter"] / m["sizeBytesBefore"]
    size_text = f"{size:.3f}"
    latency = f"{m['latencyMsAfter'] / m['latencyMsBefore']:.2f}"
    if "int8OnnxBytes" in m:  # against the FP32 ONNX export, as the anchor is measured; the safetensors ratio beside it
        size_text = f"{m['int8OnnxBytes'] / m['fp32OnnxBytes']:.3f} ({size:.3f} of safetensors)"
        latency = f"{m['int8OnnxLatencyMs'] / m['fp32OnnxLatencyMs']:.2f} (ORT INT8/FP32); {latency} vs PyTorch"
    elif case.family == "compress" and case.module == "quantize_llmc":
        latency += " (CPU emulation)"
    params = f"{m['parametersAfter'] / m['parametersBefore']:.3f}" if "parametersAfter" in m and "parametersBefore" in m else "- (ONNX)"
    quality = f"{retained(m, metric):.1%} ({m['qualityBefore']:.4g} -> {m['qualityAfter']:.4g})"
    return [[case.model, case.name, size_text, params, quality, latency, f"{m['durationSeconds']:.0f}", case.anchor]]


def baseline_row(model: str, m: dict) -> list[str]:
    return [model, "FP32 (baseline)", "1.000", "1.000", f"100.0% ({EVALUATION[model]} {m['qualityBefore']:.4g})",
            f"1.00 ({m['latencyMsBefore']:.1f} ms)", "", f"{m['sizeBytesBefore'] / 2**20:.2f} MiB, {m['parametersBefore']:,.0f} parameters"]


def print_table(rows: list[list[str]]) -> None:
    header = ["model", "method", "size ratio", "param ratio", "metric retained", "CPU latency ratio", "s", "published anchor / baseline"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(header))
    print("-" * len(line(header)))
    for r in rows:
        print(line(r))


def cpu_note() -> str:
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        line = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        flags = set(line.partition(":")[2].split())
    found = sorted(flags & {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"})
    vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    load = os.getloadavg()[0]
    lines = [f"CPU: {os.cpu_count()} cores, load average {load:.1f} at the end; INT8 instructions found: {', '.join(found) or 'none'}."]
    if load > (os.cpu_count() or 1) * 0.5:
        lines.append("Other processes share these cores: latencies (PyTorch's most) vary with them; compare ratios within one run.")
    if vnni:
        lines.append("This CPU has VNNI (VPDPBUSD multiplies uint8 activations by int8 weights and adds into int32 in one "
                     "exact instruction), so onnx-dynamic-int8 quantizes for u8s8 kernels: INT8 matmuls run at about twice FP32.")
    else:
        lines.append("This CPU has AVX2 without VNNI: u8s8 products go through VPMADDUBSW, whose int16 pair sums can saturate, "
                     "so onnx-dynamic-int8 quantizes weights to uint8 (u8u8, exact but slower): expect INT8 at about 1.2x FP32, "
                     "not 2x; the size saving is the same.")
    lines.append("llm-compressor rows run on CPU through compressed-tensors' emulation (weights decompressed, activations "
                 "fake-quantized): their latency is not the speed of vLLM's GPU kernels, only their quality is.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES], help="run only these methods")
    parser.add_argument("--workdir", type=Path, help="keep models and runs here (default: a temporary folder)")
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--recovery-steps", type=int, default=50)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="llmops-bench-compress-") as tmp:
        work = args.workdir or Path(tmp)
        data = build_models(work)
        results = [(case, run_case(case, data[case.model], work, args)) for case in CASES if not args.only or case.name in args.only]
        rows = []
        for model in EVALUATION:  # each model's FP32 baseline (the input of its first run that finished), then its methods
            mine = [(case, m) for case, m in results if case.model == model]
            first = next((m for _, m in mine if "na" not in m), None)
            rows += [baseline_row(model, first)] if first else []
            rows += [row for case, m in mine for row in rows_for(case, m)]
        print()
        print_table(rows)
        for case, m in results:
            if m.get("na", "n/a").startswith("failed"):
                print(f"{case.name}: {m['na']}")
        print()
        print(cpu_note())


if __name__ == "__main__":
    main()
