"""Write the trained artifacts: adapter or full model (safetensors), tokenizer, optional merged model, manifest."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MERGED_DIR = "merged"
CHECKPOINT_DIR = "checkpoints"


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every artifact under `root`, checkpoints excluded (they are scratch for resuming)."""
    hashes = {}
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if file.is_file() and rel.parts[0] != CHECKPOINT_DIR and rel.name != MANIFEST_NAME:
            hashes[str(rel)] = sha256_of(file)
    return hashes


def save_merged_lora(cfg, adapter_dir: Path, tokenizer) -> Path:
    """Fold the adapter into a fresh copy of the base, in the compute dtype (never 4-bit: merging needs real weights)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .modeling import DTYPES, _source_kwargs

    dtype = DTYPES[cfg.qlora.compute_dtype] if cfg.method == "qlora" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype, **_source_kwargs(cfg.model))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    target = adapter_dir / MERGED_DIR
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def write_manifest(cfg, output_dir: Path, metrics: dict, extra: dict) -> dict:
    manifest = {
        "jobName": cfg.job_name,
        "namespace": cfg.namespace,
        "baseModel": {"path": cfg.model.path, "revision": cfg.model.revision},
        "method": cfg.method,
        "format": "peft-adapter" if cfg.uses_peft else "full-model",
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": metrics,
        **extra,
        "files": hash_files(output_dir),
    }
    (output_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest
