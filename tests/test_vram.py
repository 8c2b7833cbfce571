"""Unit tests of the pre-flight VRAM estimator against hand-computed cases.

Most cases use a toy model chosen so that the arithmetic comes out in powers of two:
2**30 parameters, hidden 2048, 16 layers, vocab 32768, 16 heads, no GQA, GPT-2-style
4h MLP, untied head; batch 1, sequence 1024, bf16, gradient checkpointing on.
Useful constants: s*b*h = 1024*2048 = 2**21; 1 GiB = 2**30 bytes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmops.vram import (
    Estimate,
    ModelShape,
    TrainingPlan,
    GPU_COMPUTE_CAPABILITY,
    GPU_MEMORY_GIB,
    choose_method,
    estimate,
    gpu_memory_gib,
    insufficient_message,
    shape_from_config,
    supports_bf16,
)

approx = lambda x: pytest.approx(x, rel=1e-3)  # noqa: E731

TOY = ModelShape(parameters=2**30, hidden_size=2048, num_layers=16, vocab_size=32768, num_attention_heads=16)
PLAN = TrainingPlan(method="full", precision="bf16", per_device_batch_size=1, max_seq_length=1024, gradient_checkpointing=True)

# Toy activations with checkpointing (the same for full, lora, qlora):
#   layer inputs 16 layers * 2 B * 2**21 = 2**26 B       = 0.0625 GiB
#   one layer recomputed 34 * 2**21 B = 71,303,168 B    = 0.06640625 GiB
#   logits 8 B * 1024 tokens * 32768 vocab = 2**28 B    = 0.25 GiB
TOY_ACTS = 0.0625 + 0.06640625 + 0.25  # = 0.37890625

# Toy LoRA adapters, r=16, every linear layer adapted, r*(in+out) each:
#   q,k,v,o: 4 * (2048+2048) = 16384; fc, proj: 2 * (2048+8192) = 20480; per layer 36864 * 16 = 589,824
#   16 layers -> 9,437,184 parameters; at 4 B = 37,748,736 B = 0.03515625 GiB
TOY_ADAPTER_PARAMS = 9_437_184
TOY_ADAPTER_4B = 0.03515625

LLAMA3_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "intermediate_size": 28672,
    "vocab_size": 128256,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}
LLAMA3_8B = {**LLAMA3_70B, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32}
LLAMA32_1B = {**LLAMA3_8B, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "tie_word_embeddings": True}
H100 = "NVIDIA-H100-80GB-HBM3"
DEFAULTS = TrainingPlan(method="auto", precision="bf16", per_device_batch_size=4, max_seq_length=2048, gradient_checkpointing=True)


def components(e: Estimate) -> tuple[float, float, float, float]:
    return e.weights_gib, e.gradients_gib, e.optimizer_gib, e.activations_gib


# ----------------------------------------------------------------------------- per method


def test_full_bf16_toy():
    e = estimate(TOY, PLAN)
    # 2**30 params: weights 2 B -> 2 GiB, grads 2 B -> 2 GiB, fp32 master + Adam m, v 12 B -> 12 GiB
    assert components(e) == (approx(2.0), approx(2.0), approx(12.0), approx(TOY_ACTS))
    # overhead 1.5 + 5% of (16 + 0.37890625) = 1.5 + 0.8189453125
    assert e.overhead_gib == approx(2.3189453125)
    assert e.total_gib == approx(16.37890625 + 2.3189453125)
    assert e.trainable_parameters == 2**30


def test_full_fp32_toy():
    e = estimate(TOY, replace(PLAN, precision="fp32"))
    # fp32: weights 4 + grads 4 + Adam 8 (no master copy); activations twice the 16-bit bytes,
    # logits unchanged: 0.0625*2 + 0.06640625*2 + 0.25 = 0.5078125
    assert components(e) == (approx(4.0), approx(4.0), approx(8.0), approx(0.5078125))


def test_lora_toy():
    e = estimate(TOY, replace(PLAN, method="lora"))
    assert e.trainable_parameters == TOY_ADAPTER_PARAMS
    # frozen base 2 GiB + fp32 adapters 0.03515625; grads 4 B/adapter param; Adam m, v 8 B = 0.0703125
    assert components(e) == (approx(2.03515625), approx(TOY_ADAPTER_4B), approx(0.0703125), approx(TOY_ACTS))
    # overhead 1.5 + 0.05 * (2.03515625 + 0.03515625 + 0.0703125 + 0.37890625 = 2.51953125)
    assert e.overhead_gib == approx(1.6259765625)


def test_qlora_toy_without_double_quant():
    e = estimate(TOY, replace(PLAN, method="qlora", double_quant=False))
    # bitsandbytes leaves the embeddings, the head and the norms unquantized, and peft's
    # prepare_model_for_kbit_training upcasts them to fp32 (4 B):
    #   embeddings + head 2 * 32768 * 2048 = 2**27 = 134,217,728
    #   norms: 2 * 16 + 1 LayerNorms of 2048 weights + 2048 biases = 135,168
    #   134,352,896 params * 4 B = 537,411,584 B = 0.5005035400390625 GiB
    # the rest 2**30 - 134,352,896 = 939,388,928 params at 0.5 + 4/64 = 0.5625 B = 528,406,272 B = 0.4921166896820068 GiB
    # + adapters 0.03515625 -> 1.0277764797210693
    assert components(e) == (approx(1.0277764797210693), approx(TOY_ADAPTER_4B), approx(0.0703125), approx(TOY_ACTS))


def test_qlora_toy_with_double_quant():
    e = estimate(TOY, replace(PLAN, method="qlora"))
    # 0.5 + 1/64 + 4/(64*256) = 0.515869140625 B/param on 939,388,928 params = 0.4513205578550696 GiB
    # + 0.5005035400390625 fp32 embeddings, head and norms + 0.03515625 adapters
    assert e.weights_gib == approx(0.9869803478941321)


def test_qlora_counts_the_unquantized_parameters_in_fp32():
    """Regression: the estimate counted the embeddings and head in 16 bits, but peft upcasts them to fp32."""
    shape = shape_from_config(LLAMA32_1B)  # a 128k vocabulary: a fifth of the model is embeddings
    e = estimate(shape, replace(PLAN, method="qlora"))
    # unquantized: embeddings 128256 * 2048 = 262,668,288 (tied: the head is the same tensor)
    #   + RMSNorm weights (2 * 16 + 1) * 2048 = 67,584 -> 262,735,872 params
    # quantized: 1,235,814,400 - 262,735,872 = 973,078,528 params at 0.515869140625 B = 0.4675064086914 GiB
    # adapters r 16: 16 layers * 16 * 44,032 = 11,272,192 params at 4 B = 0.0419921875 GiB
    unquantized = 262_735_872
    assert e.weights_gib == approx(4 * unquantized / 2**30 + 0.4675064086914 + 0.0419921875)  # 1.4882659912
    # the embedding and head term alone is 4 bytes per parameter: 0.9787673950195312 GiB
    quantized_and_adapters = (shape.parameters - unquantized) * 0.515869140625 + 11_272_192 * 4
    assert e.weights_gib * 2**30 - quantized_and_adapters == approx(4 * unquantized)


def test_freeze_toy():
    e = estimate(TOY, replace(PLAN, method="freeze", trainable_layers=2))
    # a layer: (2**30 - 2**27 embeddings) / 16 = 58,720,256; trainable 2 layers + head 2**26 = 184,549,376
    assert e.trainable_parameters == 184_549_376
    # weights all 2**30 * 2 B = 2 GiB; grads 184,549,376 * 2 B = 0.34375 GiB; optimizer * 12 B = 2.0625 GiB
    # activations only for the 2 trainable layers: 2 * 2**22 B = 0.0078125 + 0.06640625 + 0.25
    assert components(e) == (approx(2.0), approx(0.34375), approx(2.0625), approx(0.32421875))


def test_prompt_tuning_toy():
    e = estimate(TOY, replace(PLAN, method="prompt-tuning", num_virtual_tokens=20))
    # 20 * 2048 = 40960 params at 4 B = 163,840 B = 0.000152587890625 GiB on top of 2 GiB
    assert e.trainable_parameters == 40_960
    assert e.weights_gib == approx(2.000152587890625)
    assert e.optimizer_gib == approx(40_960 * 8 / 2**30)  # 8 B per param = 0.00030517578125 GiB
    # every activation term scales with the 1024 + 20 = 1044 tokens: 0.37890625 * 1044 / 1024
    assert e.activations_gib == approx(0.386306762695)


def test_activations_without_checkpointing():
    e = estimate(TOY, replace(PLAN, gradient_checkpointing=False))
    # 16 layers * 34 * 2**21 B = 1.0625 GiB + logits 0.25
    assert e.activations_gib == approx(1.3125)
    # without flash attention each layer adds 5 * heads * s^2 * b = 5 * 16 * 2**20 B = 0.078125 GiB; * 16 = 1.25
    e = estimate(TOY, replace(PLAN, gradient_checkpointing=False, flash_attention=False))
    assert e.activations_gib == approx(2.5625)


def test_batch_scales_activations_only():
    e = estimate(TOY, replace(PLAN, per_device_batch_size=4))
    assert components(e) == (approx(2.0), approx(2.0), approx(12.0), approx(4 * TOY_ACTS))  # 1.515625


# ----------------------------------------------------------------------------- ZeRO and offload


def test_zero3_over_16_gpus_divides_model_states():
    e = estimate(TOY, replace(PLAN, zero_stage=3, world_size=16))
    # 2/16, 2/16, 12/16; activations are per GPU and not sharded
    assert components(e) == (approx(0.125), approx(0.125), approx(0.75), approx(TOY_ACTS))


def test_zero_stages_1_and_2():
    e1 = estimate(TOY, replace(PLAN, zero_stage=1, world_size=4))
    assert components(e1)[:3] == (approx(2.0), approx(2.0), approx(3.0))  # optimizer 12/4
    e2 = estimate(TOY, replace(PLAN, zero_stage=2, world_size=4))
    assert components(e2)[:3] == (approx(2.0), approx(0.5), approx(3.0))  # + grads 2/4


def test_stage0_with_many_gpus_is_plain_data_parallel():
    e = estimate(TOY, replace(PLAN, world_size=8))
    assert components(e)[:3] == (approx(2.0), approx(2.0), approx(12.0))


def test_offload():
    e = estimate(TOY, replace(PLAN, zero_stage=3, world_size=2, offload_optimizer=True, offload_params=True))
    # weights and optimizer in host memory; grads 2/2 stay
    assert components(e)[:3] == (0.0, approx(1.0), 0.0)


# ----------------------------------------------------------------------------- shape


def test_derived_dims_from_parameter_count():
    # 12 * 128**2 * 32**3 = 6,442,450,944 params -> 32 layers, hidden sqrt(P / (12*32)) = 4096, vocab 32000
    e = estimate(ModelShape(parameters=6_442_450_944), PLAN)
    # layer inputs 32 * 2 * 1024 * 4096 = 2**28 B = 0.25; one layer 34 * 2**22 B = 0.1328125;
    # logits 8 * 1024 * 32000 = 262,144,000 B = 0.244140625
    assert e.activations_gib == approx(0.626953125)


def test_derived_layers_from_hidden():
    # 2**30 / (12 * 2048**2) = 21.33 -> 21 layers: inputs 21 * 2**22 B = 0.08203125 GiB
    e = estimate(ModelShape(parameters=2**30, hidden_size=2048, vocab_size=32768), PLAN)
    assert e.activations_gib == approx(0.08203125 + 0.06640625 + 0.25)


def test_llama2_7b_config():
    config = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "tie_word_embeddings": False,
    }
    shape = shape_from_config(config)
    # embeddings + head 2 * 32000 * 4096 = 262,144,000; layer 4*4096**2 + 3*4096*11008 + 2*4096 = 202,383,360
    # 32 layers 6,476,267,520 + final norm 4096 -> 6,738,415,616 (the published count)
    assert shape.parameters == pytest.approx(6.74e9, rel=0.01)
    assert shape.parameters == 6_738_415_616
    assert (shape.hidden_size, shape.num_layers, shape.gated_mlp) == (4096, 32, True)


def test_llama3_gqa_configs():
    # 8B: head 2 * 128256 * 4096 = 1,050,673,152; layer q,o 2*4096**2 + k,v 2*4096*1024
    #     + 3*4096*14336 + 2*4096 = 218,112,000; * 32 + 4096 -> 8,030,261,248
    assert shape_from_config(LLAMA3_8B).parameters == 8_030_261_248
    # 70B: 2 * 128256 * 8192 = 2,101,346,304; layer 2*8192**2 + 2*8192*1024 + 3*8192*28672 + 2*8192
    #     = 855,654,400; * 80 + 8192 -> 70,553,706,496
    assert shape_from_config(LLAMA3_70B).parameters == 70_553_706_496


def test_gpt2_small_config():
    config = {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}
    shape = shape_from_config(config)
    # wte 50257*768 = 38,597,376 (tied head); wpe 1024*768 = 786,432;
    # layer 12*768**2 + 13*768 (biases, 2 LayerNorms) = 7,087,872; * 12 = 85,054,464; ln_f 1536
    assert shape.parameters == pytest.approx(124e6, rel=0.01)
    assert shape.parameters == 124_439_808
    assert shape.tie_word_embeddings and not shape.gated_mlp


def test_config_without_needed_keys():
    with pytest.raises(ValueError, match=r"lacks hidden_size.*set spec\.baseModel\.parameterCount\.$"):
        shape_from_config({"model_type": "bert", "hidden_size": 768})


def test_moe_config_is_refused():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        shape_from_config({**LLAMA3_8B, "num_local_experts": 8})


def test_invalid_plans():
    with pytest.raises(ValueError, match="choose_method"):
        estimate(TOY, replace(PLAN, method="auto"))
    with pytest.raises(ValueError, match="precision"):
        estimate(TOY, replace(PLAN, precision="int8"))
    with pytest.raises(ValueError, match="ZeRO"):
        estimate(TOY, replace(PLAN, zero_stage=4))


# ----------------------------------------------------------------------------- GPU memory


@pytest.mark.parametrize(
    ("label", "mib", "gib"),
    [
        ("NVIDIA-H100-80GB-HBM3", None, 80.0),
        ("NVIDIA-H200", None, 141.0),
        ("NVIDIA-A100-SXM4-40GB", None, 40.0),
        ("NVIDIA-L4", 23034, 24.0),  # the table wins over the label
        ("Tesla-T4", None, 16.0),
        ("NVIDIA-GeForce-RTX-4090", None, 24.0),
        ("NVIDIA-GH200-480GB", None, 96.0),  # table, not the 480 in the name
        ("NVIDIA-Future-GPU-288GB", None, 288.0),  # "NNGB" fallback
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", None, 5.0),  # a MIG slice
        ("NVIDIA-Mystery", 81559, 81559 / 1024),  # nvidia.com/gpu.memory fallback: 79.6474609375
        (None, 46068, 44.98828125),  # 46068 / 1024
    ],
)
def test_gpu_memory(label, mib, gib):
    assert gpu_memory_gib(label, mib) == approx(gib)


def test_gpu_memory_unknown():
    assert gpu_memory_gib("NVIDIA-Mystery") is None
    assert gpu_memory_gib(None) is None


@pytest.mark.parametrize(
    ("label", "major", "bf16"),
    [
        ("NVIDIA-H100-80GB-HBM3", None, True),  # Hopper 9.0
        ("NVIDIA-A100-SXM4-40GB", None, True),  # Ampere 8.0
        ("NVIDIA-L4", None, True),  # Ada 8.9
        ("NVIDIA-A10G", None, True),  # Ampere 8.6
        ("NVIDIA-B200", None, True),  # Blackwell 10.0
        ("Tesla-V100-SXM2-16GB", None, False),  # Volta 7.0
        ("Tesla-T4", None, False),  # Turing 7.5
        ("tesla-t4", None, False),  # labels are matched case-insensitively, like the memory table
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", None, True),  # a MIG slice is the card's architecture
        ("NVIDIA-Mystery", None, None),  # unknown product: cannot tell
        (None, None, None),
        ("NVIDIA-Mystery", 9, True),  # nvidia.com/gpu.compute.major fallback
        ("NVIDIA-Mystery", 7, False),
        ("Tesla-T4", 9, False),  # the table wins over the label
    ],
)
def test_supports_bf16(label, major, bf16):
    assert supports_bf16(label, major) is bf16


def test_every_known_gpu_has_memory_and_compute_capability():
    assert GPU_COMPUTE_CAPABILITY.keys() == GPU_MEMORY_GIB.keys()


# ----------------------------------------------------------------------------- acceptance: fit and auto


def test_fits_and_breakdown():
    e = Estimate("lora", 1.04, 0.26, 0.0, 2.0, 0.7)
    assert e.total_gib == approx(4.0)
    assert e.fits(4.0) and not e.fits(3.99)
    assert e.breakdown() == {"weights": 1.0, "gradients": 0.3, "optimizer": 0.0, "activations": 2.0, "overhead": 0.7}


def test_70b_full_on_one_h100_does_not_fit():
    shape = shape_from_config(LLAMA3_70B)
    available = gpu_memory_gib(H100)
    e = estimate(shape, replace(DEFAULTS, method="full"))
    # model states alone: 16 B * 70,553,706,496 = 1051.3 GiB
    assert e.weights_gib + e.gradients_gib + e.optimizer_gib == approx(16 * 70_553_706_496 / 2**30)
    assert not e.fits(available)
    msg = insufficient_message(e, available, H100)
    assert f"{e.total_gib:.1f} GiB per GPU" in msg and "1126.3" in msg
    assert "has 80.0 GiB" in msg and H100 in msg
    assert "optimizer 788.5" in msg  # 12 B * 70,553,706,496 / 2**30
    assert "lora or qlora" in msg and "ZeRO stage 3" in msg


def test_auto_picks_qlora_for_70b_on_one_h100():
    method, e, reason = choose_method(shape_from_config(LLAMA3_70B), DEFAULTS, gpu_memory_gib(H100), H100)
    assert method == "qlora" and e.method == "qlora" and e.fits(80.0)
    assert reason.startswith("full needs 1126.3 GiB per GPU and lora ")
    assert f"more than the 80.0 GiB of {H100}; qlora needs {e.total_gib:.1f} GiB." in reason
    # docs/vram-estimator.md: weights 32.887 (4-bit) + 7.833 (fp32 embeddings, head, norms) + 0.771 (adapters)
    assert e.weights_gib == approx(41.491180419921875)
    assert e.total_gib == approx(68.44669647216797) and reason.endswith("qlora needs 68.4 GiB.")


def test_auto_picks_qlora_for_70b_count_only():
    method, _, _ = choose_method(ModelShape(parameters=70_000_000_000), DEFAULTS, 80.0)
    assert method == "qlora"


def test_auto_picks_lora_for_8b_on_one_h100():
    for shape in (shape_from_config(LLAMA3_8B), ModelShape(parameters=8_000_000_000)):
        method, e, reason = choose_method(shape, DEFAULTS, 80.0, H100)
        # full: 16 B * 8.03e9 = 119.7 GiB of model states alone, more than 80
        assert method == "lora" and e.fits(80.0)
        assert reason.startswith("full needs ") and "lora needs" in reason


def test_auto_picks_full_for_1b_on_one_h100():
    for shape in (shape_from_config(LLAMA32_1B), ModelShape(parameters=1_000_000_000)):
        method, e, reason = choose_method(shape, DEFAULTS, 80.0, H100)
        assert method == "full" and e.method == "full"
        assert reason == f"full needs {e.total_gib:.1f} GiB per GPU, within the 80.0 GiB of {H100}."


def test_auto_when_nothing_fits_returns_qlora():
    method, e, reason = choose_method(shape_from_config(LLAMA3_70B), DEFAULTS, 16.0, "Tesla-T4")
    assert method == "qlora" and not e.fits(16.0)
    assert reason.startswith("No method fits") and "Tesla-T4" in reason


def test_auto_never_picks_qlora_under_zero3():
    """Regression: auto picked qlora with ZeRO-3, a pair the runner refuses after its pods got their GPUs."""
    # On one H100 only qlora would fit (see above); under ZeRO-3 it is no option, so nothing fits.
    method, e, reason = choose_method(shape_from_config(LLAMA3_70B), replace(DEFAULTS, zero_stage=3), 80.0, H100)
    assert method == "lora" and e.method == "lora" and not e.fits(80.0)
    assert reason.startswith("No method fits: per GPU, full ") and "qlora cannot be sharded with ZeRO stage 3" in reason
    # Over 8 GPUs lora fits and is chosen as before.
    method, _, _ = choose_method(shape_from_config(LLAMA3_70B), replace(DEFAULTS, zero_stage=3, world_size=8), 80.0, H100)
    assert method == "lora"


def test_zero3_makes_70b_full_fit_on_many_gpus():
    shape = shape_from_config(LLAMA3_70B)
    plan = replace(DEFAULTS, method="full", zero_stage=3, world_size=32)
    # 1051.3 GiB of states / 32 = 32.9 GiB + 20 GiB of activations + overhead
    assert estimate(shape, plan).fits(80.0)


def test_advice_never_suggests_qlora_under_zero3():
    """The API server refuses qlora with ZeRO-3: the advice must not send a user there."""
    shape = shape_from_config(LLAMA3_70B)
    plan = replace(DEFAULTS, method="lora", zero_stage=3, world_size=2)
    msg = insufficient_message(estimate(shape, plan), 10.0, "NVIDIA-L4", zero_stage=3)
    assert "qlora" not in msg and "more GPUs" in msg and "ZeRO stage 3" not in msg
    full = insufficient_message(estimate(shape, replace(plan, method="full")), 10.0, "NVIDIA-L4", zero_stage=3)
    assert "method lora," in full and "qlora" not in full
