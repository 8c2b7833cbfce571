"""Pre-flight GPU memory estimate of a fine-tuning job.

Pure functions, no torch: the operator calls them before it creates any pod,
to fail a job that cannot fit (reason InsufficientGPUMemory) and to resolve
``method: auto``. The formulas and their assumptions are in
docs/vram-estimator.md; keep the two in step.

Everything is per GPU and in GiB (2**30 bytes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

GIB = 2**30

METHODS = ("full", "freeze", "lora", "qlora", "prompt-tuning")
AUTO_ORDER = ("full", "lora", "qlora")  # best quality first, least memory last
PRECISIONS = ("bf16", "fp16", "fp32")

# Fixed part of the overhead: CUDA context, cuBLAS/NCCL workspaces and the
# memory the driver reserves (an "80GB" H100 shows 79.6 GiB in nvidia-smi).
FIXED_OVERHEAD_GIB = 1.5
# Proportional part: caching-allocator fragmentation and short-lived buffers
# (a dequantized 4-bit matrix, a ZeRO-3 gathered layer, the 16-bit logits).
FRAGMENTATION = 0.05

# Bytes per element of the logits kept for the loss: the fp32 copy the loss
# upcasts to and its fp32 gradient.
LOGIT_BYTES = 8
# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
# Transformer Models": one layer stores s*b*h*(34 + 5*a*s/h) bytes of 16-bit
# activations; the 5*a*s^2*b part is the attention score matrices.
LAYER_ACT_FACTOR = 34
ATTN_SCORE_FACTOR = 5

# Heuristics for a model known only by its parameter count.
DEFAULT_VOCAB = 32_000
ASPECT_RATIO = 128  # hidden_size / num_layers of Llama-style models (4096/32)
HEAD_DIM = 128

# bitsandbytes NF4/FP4: 4 bits per weight plus one fp32 absmax per block of 64;
# double quantization stores the absmax in 8 bits with an fp32 constant per 256 blocks.
QUANT_BYTES = 0.5 + 4 / 64
QUANT_BYTES_DOUBLE = 0.5 + 1 / 64 + 4 / (64 * 256)
# What bitsandbytes leaves unquantized (the embeddings, the lm_head, which transformers
# skips by default, and the norms) does not stay in 16 bits under QLoRA: the runner calls
# peft's prepare_model_for_kbit_training, which casts every 16-bit parameter that is not
# a Params4bit to fp32 for numerical stability.
UPCAST_BYTES = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a model; only ``parameters`` is required."""

    parameters: int
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None  # grouped-query attention; None: same as heads
    head_dim: int | None = None  # None: hidden_size / heads
    intermediate_size: int | None = None  # None: 4 * hidden_size
    gated_mlp: bool = False  # Llama-style gate/up/down instead of GPT-2 fc/proj
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class TrainingPlan:
    """The parts of a FineTuneJob spec that decide memory."""

    method: str  # full | freeze | lora | qlora | prompt-tuning
    precision: str  # bf16 | fp16 | fp32
    per_device_batch_size: int
    max_seq_length: int
    gradient_checkpointing: bool
    zero_stage: int = 0  # 0..3, sharding over all world_size GPUs of the job
    offload_optimizer: bool = False
    offload_params: bool = False
    world_size: int = 1  # nodes * gpus_per_node
    lora_r: int = 16
    trainable_layers: int = 2  # freeze
    num_virtual_tokens: int = 20  # prompt-tuning
    double_quant: bool = True  # qlora
    flash_attention: bool = True  # SDPA/flash: attention scores are never stored


@dataclass(frozen=True)
class Estimate:
    """Estimated peak memory of one GPU, by component, in GiB."""

    method: str
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float
    trainable_parameters: int = 0

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.gradients_gib + self.optimizer_gib + self.activations_gib + self.overhead_gib

    def breakdown(self) -> dict[str, float]:
        return {
            "weights": round(self.weights_gib, 1),
            "gradients": round(self.gradients_gib, 1),
            "optimizer": round(self.optimizer_gib, 1),
            "activations": round(self.activations_gib, 1),
            "overhead": round(self.overhead_gib, 1),
        }

    def fits(self, available_gib: float) -> bool:
        # The safety margin is the overhead term, so no second factor here.
        return self.total_gib <= available_gib


# --------------------------------------------------------------------------- model shape


def shape_from_config(config: dict) -> ModelShape:
    """Shape and parameter count of a Hugging Face config.json (Llama/Mistral/Qwen or GPT-2 keys)."""
    if not isinstance(config, dict):
        raise ValueError("The model config must be a JSON object.")
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if config.get(key):
            raise ValueError(
                f"The model config describes a mixture-of-experts model ({key}) that the estimator cannot count; "
                "set spec.baseModel.parameterCount."
            )
    if all(k in config for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")):
        return _llama_shape(config)
    if all(k in config for k in ("n_embd", "n_layer", "vocab_size")):
        return _gpt2_shape(config)
    raise ValueError(
        "The model config lacks hidden_size, num_hidden_layers, intermediate_size and vocab_size "
        "(or GPT-2's n_embd, n_layer and vocab_size), so its size is unknown; set spec.baseModel.parameterCount."
    )


def _llama_shape(c: dict) -> ModelShape:
    h, layers, inter, vocab = (int(c[k]) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    heads = int(c.get("num_attention_heads") or max(1, h // HEAD_DIM))
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or h // heads)
    # Llama, Mistral and Qwen default to untied; small Qwen/Llama 3.2 set it true.
    tied = bool(c.get("tie_word_embeddings", False))
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    attention = h * q_dim + 2 * h * kv_dim + q_dim * h  # q, k, v, o; biases ignored (<0.1%)
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attention + mlp + 2 * h  # two RMSNorm weights
    embeddings = vocab * h * (1 if tied else 2)  # input embeddings + lm_head
    params = embeddings + layers * per_layer + h  # + final norm
    return ModelShape(
        parameters=params,
        hidden_size=h,
        num_layers=layers,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        gated_mlp=True,
        tie_word_embeddings=tied,
    )


def _gpt2_shape(c: dict) -> ModelShape:
    h, layers, vocab = int(c["n_embd"]), int(c["n_layer"]), int(c["vocab_size"])
    heads = int(c.get("n_head") or max(1, h // 64))
    positions = int(c.get("n_positions") or c.get("n_ctx") or 1024)
    inter = int(c.get("n_inner") or 4 * h)
    # c_attn (h -> 3h), c_proj (h -> h), c_fc (h -> inter), c_proj (inter -> h), all with biases,
    # and two LayerNorms (weight + bias each).
    per_layer = (3 * h * h + 3 * h) + (h * h + h) + (h * inter + inter) + (inter * h + h) + 4 * h
    tied = bool(c.get("tie_word_embeddings", True))  # GPT-2 ties its head to wte
    embeddings = vocab * h * (1 if tied else 2) + positions * h
    params = embeddings + layers * per_layer + 2 * h  # + final LayerNorm
    return ModelShape(
        parameters=params,
        hidden_size=h,
        num_layers=layers,
        vocab_size=vocab,
        num_attention_heads=heads,
        intermediate_size=inter,
        gated_mlp=False,
        tie_word_embeddings=tied,
    )


@dataclass(frozen=True)
class _Dims:
    """A shape with every dimension filled in, by heuristic where the shape lacks it."""

    hidden: int
    layers: int
    heads: int
    q_dim: int
    kv_dim: int
    intermediate: int
    gated: bool
    vocab: int
    tied: bool


def _dims(shape: ModelShape) -> _Dims:
    p = shape.parameters
    h, layers = shape.hidden_size, shape.num_layers
    # A dense transformer has about 12*h^2 parameters per layer (4h^2 attention, 8h^2 MLP).
    if not h and not layers:
        layers = max(1, round((p / (12 * ASPECT_RATIO**2)) ** (1 / 3)))
    if not h:
        h = max(1, round(math.sqrt(p / (12 * layers))))
    if not layers:
        layers = max(1, round(p / (12 * h * h)))
    heads = shape.num_attention_heads or max(1, round(h / HEAD_DIM))
    head_dim = shape.head_dim or max(1, h // heads)
    kv_heads = shape.num_key_value_heads or heads
    return _Dims(
        hidden=h,
        layers=layers,
        heads=heads,
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        intermediate=shape.intermediate_size or 4 * h,
        gated=shape.gated_mlp,
        vocab=shape.vocab_size or DEFAULT_VOCAB,
        tied=shape.tie_word_embeddings,
    )


def _embedding_params(shape: ModelShape, d: _Dims) -> int:
    """Input embeddings plus the lm_head when untied: what bitsandbytes leaves unquantized."""
    return min(shape.parameters, d.vocab * d.hidden * (1 if d.tied else 2))


def _unquantized_params(shape: ModelShape, d: _Dims) -> int:
    """What a 4-bit load keeps out of the Linear4bit layers: embeddings, untied lm_head and the norms.

    Norms: two per block and a final one, of h weights (RMSNorm, the Llama-style gated
    models) or h weights and h biases (LayerNorm, GPT-2 and the heuristic shape).
    """
    norms = (2 * d.layers + 1) * d.hidden * (1 if d.gated else 2)
    return min(shape.parameters, _embedding_params(shape, d) + norms)


def _lora_params(d: _Dims, r: int) -> int:
    """Adapter parameters with every linear layer of every block adapted: r * (in + out) each."""
    h = d.hidden
    attention = (h + d.q_dim) + 2 * (h + d.kv_dim) + (d.q_dim + h)  # q, k, v, o
    mlp = (3 if d.gated else 2) * (h + d.intermediate)  # gate, up, down | fc, proj
    return d.layers * r * (attention + mlp)


def _trainable_params(shape: ModelShape, plan: TrainingPlan, d: _Dims) -> int:
    if plan.method == "full":
        return shape.parameters
    if plan.method == "freeze":
        # The top layers and the head (vocab x hidden) train; a layer is an equal share of the rest.
        per_layer = (shape.parameters - _embedding_params(shape, d)) / d.layers
        head = d.vocab * d.hidden
        return min(shape.parameters, round(min(plan.trainable_layers, d.layers) * per_layer + head))
    if plan.method in ("lora", "qlora"):
        return _lora_params(d, plan.lora_r)
    return plan.num_virtual_tokens * d.hidden  # prompt-tuning


# --------------------------------------------------------------------------- the estimate


def _validate(plan: TrainingPlan) -> None:
    if plan.method == "auto":
        raise ValueError("Method auto has no estimate of its own; resolve it with choose_method.")
    if plan.method not in METHODS:
        raise ValueError(f"Unknown method {plan.method!r}; expected one of {', '.join(METHODS)}.")
    if plan.precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {plan.precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if plan.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, not {plan.zero_stage}.")
    if plan.world_size < 1 or plan.per_device_batch_size < 1 or plan.max_seq_length < 1:
        raise ValueError("World size, batch size and sequence length must be at least 1.")


def _state_bytes(shape: ModelShape, plan: TrainingPlan, d: _Dims, trainable: int) -> tuple[float, float, float]:
    """Weights, gradients and optimizer states in bytes, before ZeRO sharding."""
    wb = 4 if plan.precision == "fp32" else 2  # bytes of a 16-bit or fp32 weight
    if plan.method in ("full", "freeze"):
        # Mixed-precision AdamW: 16-bit weights and grads, fp32 master copy + m + v = 12 B.
        # In fp32 there is no master copy: 4 + 4 + 8. Both are 16 B per trainable parameter.
        return shape.parameters * wb, trainable * wb, trainable * (16 - 2 * wb)
    # Adapters (PEFT keeps them in fp32): 4 B weights, 4 B grads, 8 B Adam m and v.
    if plan.method == "qlora":
        unquantized = _unquantized_params(shape, d)
        per_param = QUANT_BYTES_DOUBLE if plan.double_quant else QUANT_BYTES
        base = (shape.parameters - unquantized) * per_param + unquantized * UPCAST_BYTES
    else:  # lora, prompt-tuning: frozen base in the training dtype
        base = shape.parameters * wb
    return base + trainable * 4, trainable * 4, trainable * 8


def _activation_bytes(plan: TrainingPlan, d: _Dims) -> float:
    b = plan.per_device_batch_size
    s = plan.max_seq_length + (plan.num_virtual_tokens if plan.method == "prompt-tuning" else 0)
    h = d.hidden
    scale = 2 if plan.precision == "fp32" else 1  # the 34 assumes 2-byte activations
    one_layer = scale * LAYER_ACT_FACTOR * s * b * h
    if not plan.flash_attention:
        one_layer += scale * ATTN_SCORE_FACTOR * d.heads * s * s * b
    # Backward reaches only the layers above the frozen part under freeze; every layer otherwise
    # (LoRA and prompt-tuning need gradients flowing through the frozen base).
    layers = min(plan.trainable_layers, d.layers) if plan.method == "freeze" else d.layers
    if plan.gradient_checkpointing:
        # Each layer keeps only its input (one 16-bit value per hidden unit per token);
        # one layer at a time is recomputed in full during backward.
        stored = layers * scale * 2 * s * b * h + one_layer
    else:
        stored = layers * one_layer
    logits = LOGIT_BYTES * s * b * d.vocab
    return stored + logits


def estimate(shape: ModelShape, plan: TrainingPlan) -> Estimate:
    """Estimated peak memory per GPU of training ``shape`` with ``plan``."""
    _validate(plan)
    if shape.parameters < 1:
        raise ValueError("The model must have at least one parameter.")
    d = _dims(shape)
    trainable = _trainable_params(shape, plan, d)
    weights, grads, optim = _state_bytes(shape, plan, d, trainable)

    # ZeRO partitions the model states over every GPU of the job; activations are per GPU.
    n = plan.world_size
    if plan.zero_stage >= 1:
        optim /= n
    if plan.zero_stage >= 2:
        grads /= n
    if plan.zero_stage >= 3:
        weights /= n
    if plan.offload_optimizer:
        optim = 0.0
    if plan.offload_params:
        weights = 0.0

    acts = _activation_bytes(plan, d)
    subtotal = (weights + grads + optim + acts) / GIB
    return Estimate(
        method=plan.method,
        weights_gib=weights / GIB,
        gradients_gib=grads / GIB,
        optimizer_gib=optim / GIB,
        activations_gib=acts / GIB,
        overhead_gib=FIXED_OVERHEAD_GIB + FRAGMENTATION * subtotal,
        trainable_parameters=trainable,
    )


# --------------------------------------------------------------------------- GPU memory

# Memory per GPU of the products that NVIDIA GPU feature discovery labels
# (nvidia.com/gpu.product), in GiB as the product name states it (HBM and GDDR
# come in binary sizes; the driver's reserve is part of the fixed overhead).
GPU_MEMORY_GIB: dict[str, float] = {
    "NVIDIA-B200": 180,
    "NVIDIA-H200": 141,
    "NVIDIA-H200-NVL": 141,
    "NVIDIA-GH200-480GB": 96,  # 480 GB counts the Grace LPDDR; the GPU has 96 GB HBM3
    "NVIDIA-H100-80GB-HBM3": 80,
    "NVIDIA-H100-PCIE": 80,
    "NVIDIA-H100-NVL": 94,
    "NVIDIA-H800": 80,
    "NVIDIA-A100-SXM4-80GB": 80,
    "NVIDIA-A100-80GB-PCIE": 80,
    "NVIDIA-A100-SXM4-40GB": 40,
    "NVIDIA-A100-PCIE-40GB": 40,
    "NVIDIA-A800-SXM4-80GB": 80,
    "NVIDIA-L40S": 48,
    "NVIDIA-L40": 48,
    "NVIDIA-L4": 24,
    "NVIDIA-A40": 48,
    "NVIDIA-A30": 24,
    "NVIDIA-A10G": 24,
    "NVIDIA-A10": 24,
    "NVIDIA-RTX-A6000": 48,
    "NVIDIA-RTX-6000-ADA-GENERATION": 48,
    "NVIDIA-GEFORCE-RTX-4090": 24,
    "NVIDIA-GEFORCE-RTX-3090": 24,
    "TESLA-T4": 16,
    "TESLA-V100-SXM2-16GB": 16,
    "TESLA-V100-SXM2-32GB": 32,
    "TESLA-V100-PCIE-16GB": 16,
    "TESLA-V100-PCIE-32GB": 32,
}

# CUDA compute capability of the same products: bf16 tensor cores and the bf16
# autocast path start with Ampere (8.0); Volta (7.0) and Turing (7.5) have none.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
GPU_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "NVIDIA-B200": (10, 0),
    "NVIDIA-H200": (9, 0),
    "NVIDIA-H200-NVL": (9, 0),
    "NVIDIA-GH200-480GB": (9, 0),
    "NVIDIA-H100-80GB-HBM3": (9, 0),
    "NVIDIA-H100-PCIE": (9, 0),
    "NVIDIA-H100-NVL": (9, 0),
    "NVIDIA-H800": (9, 0),
    "NVIDIA-A100-SXM4-80GB": (8, 0),
    "NVIDIA-A100-80GB-PCIE": (8, 0),
    "NVIDIA-A100-SXM4-40GB": (8, 0),
    "NVIDIA-A100-PCIE-40GB": (8, 0),
    "NVIDIA-A800-SXM4-80GB": (8, 0),
    "NVIDIA-L40S": (8, 9),
    "NVIDIA-L40": (8, 9),
    "NVIDIA-L4": (8, 9),
    "NVIDIA-A40": (8, 6),
    "NVIDIA-A30": (8, 0),
    "NVIDIA-A10G": (8, 6),
    "NVIDIA-A10": (8, 6),
    "NVIDIA-RTX-A6000": (8, 6),
    "NVIDIA-RTX-6000-ADA-GENERATION": (8, 9),
    "NVIDIA-GEFORCE-RTX-4090": (8, 9),
    "NVIDIA-GEFORCE-RTX-3090": (8, 6),
    "TESLA-T4": (7, 5),
    "TESLA-V100-SXM2-16GB": (7, 0),
    "TESLA-V100-SXM2-32GB": (7, 0),
    "TESLA-V100-PCIE-16GB": (7, 0),
    "TESLA-V100-PCIE-32GB": (7, 0),
}

_MIG_RE = re.compile(r"-MIG-\d+g\.(\d+)gb", re.IGNORECASE)  # e.g. NVIDIA-A100-SXM4-40GB-MIG-1g.5gb
_GB_RE = re.compile(r"(\d+)\s*GB", re.IGNORECASE)


def gpu_memory_gib(product_label: str | None, memory_label_mib: int | None = None) -> float | None:
    """Memory of one GPU: known product, else 'NNGB' in the label, else the nvidia.com/gpu.memory label (MiB)."""
    if product_label:
        mig = _MIG_RE.search(product_label)
        if mig:  # a MIG slice has the slice's memory, not the whole card's
            return float(mig.group(1))
        known = GPU_MEMORY_GIB.get(product_label.upper())
        if known is not None:
            return float(known)
        sizes = _GB_RE.findall(product_label)
        if sizes:
            return float(sizes[-1])
    if memory_label_mib:
        return int(memory_label_mib) / 1024
    return None


def supports_bf16(product_label: str | None, compute_major: int | None = None) -> bool | None:
    """Whether the GPU has bf16 (compute capability 8.0, Ampere, or newer); None when unknown.

    Known product first (a MIG slice is its card's architecture), else the
    nvidia.com/gpu.compute.major label that GPU feature discovery also sets.
    """
    if product_label:
        card = _MIG_RE.split(product_label, maxsplit=1)[0]
        known = GPU_COMPUTE_CAPABILITY.get(card.upper())
        if known is not None:
            return known >= BF16_MIN_COMPUTE_CAPABILITY
    if compute_major is not None:
        return (int(compute_major), 0) >= BF16_MIN_COMPUTE_CAPABILITY
    return None


# --------------------------------------------------------------------------- auto and messages


def _of(available_gib: float, gpu_label: str | None) -> str:
    return f"the {available_gib:.1f} GiB of {gpu_label}" if gpu_label else f"the {available_gib:.1f} GiB per GPU"


def choose_method(
    shape: ModelShape, plan_template: TrainingPlan, available_gib: float, gpu_label: str | None = None
) -> tuple[str, Estimate, str]:
    """Resolve ``method: auto``: full if it fits, else lora, else qlora.

    When none fits, the one needing the least memory is returned with its estimate.
    Under ZeRO stage 3 qlora is no option: the runner cannot shard a 4-bit base, and
    would only find out once its pods hold their GPUs.
    """
    no_qlora = plan_template.zero_stage == 3
    tried: list[Estimate] = []
    for method in AUTO_ORDER:
        if method == "qlora" and no_qlora:
            continue
        est = estimate(shape, replace(plan_template, method=method))
        if est.fits(available_gib):
            return method, est, _reason(tried, est, available_gib, gpu_label)
        tried.append(est)
    least = min(tried, key=lambda e: e.total_gib)
    needs = ", ".join(f"{e.method} {e.total_gib:.1f} GiB" for e in tried)
    why_not = " (qlora cannot be sharded with ZeRO stage 3)" if no_qlora else ""
    reason = f"No method fits: per GPU, {needs}, all more than {_of(available_gib, gpu_label)}; {least.method} needs the least{why_not}."
    return least.method, least, reason


def _reason(rejected: list[Estimate], chosen: Estimate, available_gib: float, gpu_label: str | None) -> str:
    where = _of(available_gib, gpu_label)
    if not rejected:
        return f"{chosen.method} needs {chosen.total_gib:.1f} GiB per GPU, within {where}."
    first, *rest = rejected
    needs = f"{first.method} needs {first.total_gib:.1f} GiB per GPU"
    needs += "".join(f" and {e.method} {e.total_gib:.1f} GiB" for e in rest)
    return f"{needs}, more than {where}; {chosen.method} needs {chosen.total_gib:.1f} GiB."


def insufficient_message(estimate: Estimate, available_gib: float, gpu_label: str | None, zero_stage: int = 0) -> str:
    """One sentence for the Failed condition (reason InsufficientGPUMemory)."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate.breakdown().items())
    gpu = gpu_label or "the requested GPU"
    return (
        f"{estimate.method} needs an estimated {estimate.total_gib:.1f} GiB per GPU ({parts} GiB) "
        f"but {gpu} has {available_gib:.1f} GiB; {_suggestion(estimate.method, zero_stage)}."
    )


def _suggestion(method: str, zero_stage: int) -> str:
    # qlora cannot be sharded with ZeRO-3 (the API server refuses it): never suggest it there.
    qlora = "" if zero_stage == 3 else " or qlora"
    lighter = {"full": f"method lora{qlora}, ", "freeze": f"method lora{qlora}, ", "lora": "method qlora, " if qlora else ""}.get(method, "")
    more_gpus = "more GPUs" if zero_stage == 3 else "more GPUs with ZeRO stage 3"
    return f"try {lighter}{more_gpus}, a smaller batch or sequence length, or gradient checkpointing if it is off"
