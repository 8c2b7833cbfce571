"""GPU benchmark of the fine-tuning runner: the CPU benchmark's table in bf16, with QLoRA added.

Reports torch's peak CUDA memory per method next to trainable parameters and throughput.
Needs an NVIDIA GPU and the finetune-gpu extra (bitsandbytes); exits with a message otherwise.

    .venv/bin/python bench/finetune_gpu.py --sizes 1024x8 2048x16 --steps 50
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_cpu  # noqa: E402  (same directory)

finetune_cpu.METHOD_BLOCKS["qlora"] = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "qlora": {"quantType": "nf4", "computeDtype": "bfloat16", "doubleQuant": True},
    "training": {"learningRate": 5e-3},
}


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/finetune_gpu.py needs a CUDA GPU; use bench/finetune_cpu.py on this machine.")
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    finetune_cpu.main(default_precision="bf16", methods=["full", "freeze", "lora", "qlora", "prompt-tuning"])


if __name__ == "__main__":
    main()
