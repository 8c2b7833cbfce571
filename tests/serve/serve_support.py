"""What the serving runner tests share: the server process, its config, runs in .venv-serve, the models.

`python -m llmops_runners.serve --config ...` runs in `.venv-serve` (the `serve` extra: transformers
4.x, peft, Optimum's ONNX Runtime classes, FastAPI, uvicorn), which `scripts/setup.sh` makes beside
the test venv, on a free localhost port, offline (HF_HUB_OFFLINE=1), with one torch thread (the
machine is shared). The tests talk to it as clients do, with the official `openai` client and httpx.
What the server answers is compared with what transformers / peft / Optimum generate on their own
in the serving venv (`REFERENCE`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.helpers
VENV = REPO / ".venv-serve"
SERVED = "tiny"
START_TIMEOUT = 180


def python_of_serve() -> Path:
    python = VENV / "bin" / "python"
    assert python.exists(), f"{python} is missing: scripts/setup.sh makes it (pip install -e '.[serve,runner-torch]')"
    return python


def serve_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One `python -m llmops_runners.serve` process; `health_seen` is every /health status seen while it started."""

    config: dict
    workdir: Path
    proc: subprocess.Popen | None = None
    health_seen: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['port']}"

    @property
    def log(self) -> str:
        file = self.workdir / "server.log"
        return file.read_text(errors="replace") if file.exists() else ""

    def start(self, wait: bool = True) -> "ServerProcess":
        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "serve.json"
        path.write_text(json.dumps(self.config))
        with open(self.workdir / "server.log", "wb") as log:
            self.proc = subprocess.Popen([str(python_of_serve()), "-m", "llmops_runners.serve", "--config", str(path)],
                                         env=serve_env(), stdout=log, stderr=subprocess.STDOUT)
        if not wait:
            return self
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log[-4000:]}")
            try:
                status = httpx.get(self.url + "/health", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status is not None and (not self.health_seen or self.health_seen[-1] != status):
                self.health_seen.append(status)
            if status == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the server did not become healthy in {START_TIMEOUT}s:\n{self.log[-4000:]}")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def server_config(model: Path, port: int | None = None, **extra) -> dict:
    return {"model": {"path": str(model)}, "servedModelName": SERVED, "host": "127.0.0.1", "port": port or free_port(), **extra}


def in_serve_venv(code: str, *args: str, timeout: float = 300) -> dict:
    """Run `code` in .venv-serve; it prints one JSON object on its last line."""
    done = subprocess.run([str(python_of_serve()), "-c", code, *args], env=serve_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_adapter(base: Path, out: Path, seed: int, scale: float = 0.5, targets=("q_proj", "v_proj", "o_proj")) -> Path:
    """A LoRA adapter of `base` with random, non-zero B (peft initialises B to zero: an adapter that changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules=list(targets)))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, scale)
    model.save_pretrained(out)
    return out


QK_SCALE = 8.0  # attention logits x64


def sharpen_attention(model: Path) -> Path:
    """Scale the query and key weights up: untrained, the tiny Llama's attention is near uniform, blind to
    positions and to what padding is masked, so a wrong position id or mask would not change its answers."""
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    save_file({k: w * QK_SCALE if k.endswith(("q_proj.weight", "k_proj.weight")) else w for k, w in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})
    return model


PROMPTS = ["What colour is the apple?", "Name the colour of the river.", "The tiger is which colour? Tell me",
           "lamp", "Tell me which colour the candle has, and the bridge, and the pepper."]
CHAT = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "What colour is the stone?"}]
MAX_TOKENS = 12

# Greedy generation with transformers (+ peft per adapter) or Optimum, one prompt at a time, in the serving venv:
# what the server must answer. Token ids and the text as the tokenizer decodes them whole.
REFERENCE = r"""
import json, sys
import torch
torch.set_num_threads(1)
from llmops_runners.hf_compat import load_tokenizer, readable_config
from transformers import AutoModelForCausalLM

spec = json.loads(sys.argv[1])
tokenizer = load_tokenizer(spec["model"])
chat_text = tokenizer.apply_chat_template(spec["chat"], add_generation_prompt=True, tokenize=False)
inputs = {"prompt:" + p: tokenizer(p)["input_ids"] for p in spec["prompts"]}
inputs["chat"] = tokenizer(chat_text, add_special_tokens=False)["input_ids"]

def run(model):
    out = {}
    for key, ids in inputs.items():
        generated = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=spec["max_tokens"], do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = generated[0, len(ids):].tolist()
        out[key] = {"ids": new, "text": tokenizer.decode(new, skip_special_tokens=True), "prompt_tokens": len(ids)}
    return out

def base():
    return AutoModelForCausalLM.from_pretrained(spec["model"], config=readable_config(spec["model"]), dtype=torch.float32).eval()

result = {} if spec.get("onnx") else {"base": run(base())}
for name, path in spec.get("adapters", {}).items():
    from peft import PeftModel
    result[name] = run(PeftModel.from_pretrained(base(), path).eval())
if spec.get("onnx"):
    from optimum.onnxruntime import ORTModelForCausalLM
    result["onnx"] = run(ORTModelForCausalLM.from_pretrained(spec["onnx"]))
print(json.dumps(result))
"""


def metric(text: str, name: str, **labels) -> float:
    """The value of one Prometheus sample in an exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0
