"""Which parameters each method trains, on real models (tiny, and realistically shaped on the meta device)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llmops_runners.config import FreezeSettings, LoraSettings
from llmops_runners.errors import BadInputError
from llmops_runners.modeling import add_lora, count_parameters, freeze_lower_layers, resolve_lora_targets
from tests.helpers.tiny_models import realistic_llama_config


@pytest.mark.parametrize("r", [8, 16])
def test_lora_on_a_realistic_model_trains_under_one_percent(r):
    # TinyLlama-1.1B's shape; the meta device builds it without allocating 4 GiB.
    with torch.device("meta"):
        model = LlamaForCausalLM(realistic_llama_config())
        peft_model = add_lora(model, LoraSettings(r=r, alpha=2 * r))
    trainable, total = count_parameters(peft_model)
    assert total > 1e9
    assert 0 < trainable / total < 0.01, f"{trainable} of {total}"


def test_freeze_trains_only_top_layers_head_and_final_norm(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    freeze_lower_layers(model, FreezeSettings(trainableLayers=1).trainable_layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing left to train"
    assert all(n.startswith(("model.layers.1.", "lm_head.", "model.norm.")) for n in trainable), trainable
    assert "lm_head.weight" in trainable and "model.norm.weight" in trainable
    assert not any(n.startswith("model.layers.0.") for n in trainable)


def test_freeze_more_layers_than_the_model_has_is_bad_input(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with pytest.raises(BadInputError, match="exceeds the model's 2 layers"):
        freeze_lower_layers(model, 5)


def test_lora_target_defaults_and_unknown_target(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert resolve_lora_targets(model, None) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_lora_targets(model, ["all-linear"]) == "all-linear"
    with pytest.raises(BadInputError, match="'c_attn' is not in the model"):
        resolve_lora_targets(model, ["q_proj", "c_attn"])
