"""CPU benchmark of the fine-tuning runner: trainable parameters, peak memory and throughput per method.

Each method runs as its own `python -m llmops_runners.finetune` process, so the peak RSS it
reports is that method's alone. Figures are printed, never asserted.

    .venv/bin/python bench/finetune_cpu.py            # hidden x layers: 64x2 (the test model), 256x4, 1024x8
    .venv/bin/python bench/finetune_cpu.py --sizes 64x2 --steps 60
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.tiny_data import corpus_texts, instruction_examples, write_jsonl  # noqa: E402
from tests.helpers.tiny_models import make_tiny_model  # noqa: E402

METHOD_BLOCKS = {
    "full": {"training": {"learningRate": 2e-3}},
    "freeze": {"freeze": {"trainableLayers": 1}, "training": {"learningRate": 2e-3}},
    "lora": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "training": {"learningRate": 5e-3}},
    "prompt-tuning": {"promptTuning": {"numVirtualTokens": 8}, "training": {"learningRate": 3e-2}},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_method(root: Path, model: Path, data: Path, method: str, steps: int, batch: int, precision: str,
               extra: dict | None = None) -> dict:
    work = root / f"{model.name}-{method}"
    config = merge({
        "jobName": f"bench-{method}",
        "model": {"path": str(model)},
        "dataset": {"path": str(data), "validationSplit": 0.0},
        "method": method,
        "training": {"maxSteps": steps, "perDeviceBatchSize": batch, "precision": precision, "loggingSteps": 10**6},
        "checkpointing": {"everySteps": 10**6},
        "output": {"path": str(work / "out")},
        "metrics": {"port": None},
        "terminationMessagePath": str(work / "termination-log"),
    }, merge(METHOD_BLOCKS.get(method, {}), extra or {}))
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "runners"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "llmops_runners.finetune", "--config", str(work / "config.json")],
                            env=env, capture_output=True, text=True)
    message = json.loads((work / "termination-log").read_text())
    if result.returncode != 0:
        raise SystemExit(f"{method} failed: {message['message']}")
    return message["metrics"]


def baseline_rss() -> int:
    """Peak RSS of a process that only imports the runner's stack: subtracted to show what training adds."""
    code = ("import resource, llmops_runners.train; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "runners"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def print_table(rows: list[tuple[str, str, dict]], baseline: int) -> None:
    header = f"{'model':<10} {'method':<14} {'trainable':>12} {'of total':>12} {'%':>8} {'peak RSS MiB':>13} " \
             f"{'+ over import':>14} {'peak CUDA MiB':>14} {'tokens/s':>10} {'samples/s':>10}"
    print(header)
    print("-" * len(header))
    for size, method, m in rows:
        cuda = m.get("peakCudaBytes")
        cuda_text = f"{max(cuda) / 2**20:.0f}" if cuda else "-"
        print(f"{size:<10} {method:<14} {m['trainableParameters']:>12,} {m['totalParameters']:>12,} "
              f"{m['trainablePercent']:>8.3f} {m['peakRssBytes'] / 2**20:>13.0f} "
              f"{(m['peakRssBytes'] - baseline) / 2**20:>14.0f} {cuda_text:>14} "
              f"{m.get('tokensPerSecond', 0):>10.0f} {m.get('samplesPerSecond', 0):>10.1f}")


def build_models(root: Path, sizes: list[str]) -> list[tuple[str, Path]]:
    models = []
    for size in sizes:
        hidden, layers = (int(x) for x in size.split("x"))
        models.append((size, make_tiny_model(root / f"model-{size}", corpus_texts(), hidden=hidden, layers=layers)))
    return models


def main(argv: list[str] | None = None, default_precision: str = "fp32", methods: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64x2", "256x4", "1024x8"], help="HIDDENxLAYERS of Llama-style models")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default=default_precision, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--methods", nargs="+", default=methods or list(METHOD_BLOCKS))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        root = Path(tmp)
        train, _ = instruction_examples()
        data = write_jsonl(root / "train.jsonl", train)
        rows = []
        for size, model in build_models(root, args.sizes):
            for method in args.methods:
                rows.append((size, method, run_method(root, model, data, method, args.steps, args.batch, args.precision)))
        baseline = baseline_rss()
        print(f"\n{args.steps} steps, batch {args.batch}, {args.precision}, {os.cpu_count()} CPUs; "
              f"importing the stack alone peaks at {baseline / 2**20:.0f} MiB RSS")
        print_table(rows, baseline)


if __name__ == "__main__":
    main()
