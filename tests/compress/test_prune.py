"""The prune stage, run in-process in the test venv (transformers 5) and once under transformers 4.

What is checked is what a user relies on: the sparsity is on the weights, structured pruning
really shrinks the layers and transformers reloads the result, removing heads or channels is
exactly the model with those heads' or channels' contributions cut, and recovery wins accuracy back.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from llmops_runners.compress.config import CompressConfig
from llmops_runners.compress.models import ModelRef, count_parameters, weight_sparsity
from llmops_runners.compress.stages import StageContext
from llmops_runners.errors import BadInputError

from conftest import python_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# In-process stages run on one torch thread (conftest.one_torch_thread says why).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prune(model: Path, task: str, settings: dict, out: Path, seed: int = 42):
    from llmops_runners.compress import prune as stage

    config = CompressConfig.model_validate({"model": {"path": str(model)}, "stages": [{"prune": settings}],
                                           "output": {"path": str(out / "final")}, "maxSeqLength": 64, "seed": seed})
    steps = []
    ctx = StageContext(config=config, index=0, name="prune-0", out=out, progress=lambda s, t: steps.append((s, t)))
    outcome = stage.run(config.stages[0].prune, ModelRef(model, task), ctx)
    assert steps and steps[-1][0] == steps[-1][1], steps  # progress reaches its total
    assert outcome.model.path == out and (out / "config.json").is_file()
    return outcome


def load(path: Path, task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    return cls.from_pretrained(path).eval()


def block_linears(model) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and (".layer." in n or ".layers." in n)}


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message and "\n" not in message


def inputs(tokenizer_path: Path, texts: list[str]) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def test_magnitude_half_the_block_weights_and_recovery_keeps_accuracy(classifier, tmp_path):
    from tests.helpers.classifier import accuracy

    evaluation = [json.loads(line) for line in Path(classifier["eval"]).read_text().splitlines()]
    before = accuracy(classifier["model"], evaluation)
    outcome = prune(classifier["model"], "sequence-classification", {
        "method": "magnitude", "sparsity": 0.5, "iterations": 2,
        "recovery": {"datasetPath": str(classifier["train"]), "steps": 15, "learningRate": 5e-5, "batchSize": 16}}, tmp_path / "out")
    original, pruned = load(classifier["model"], "sequence-classification"), load(tmp_path / "out", "sequence-classification")

    layers = block_linears(pruned)
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    assert len(layers) == 36 and abs(zeros / total - 0.5) < 1e-3  # measured on the saved weights
    assert all(abs(float((m.weight == 0).float().mean()) - 0.5) < 1e-3 for m in layers.values())  # per layer
    assert outcome.metrics["targetSparsity"] == 0.5 and abs(outcome.metrics["achievedSparsity"] - 0.5) < 1e-3
    assert abs(weight_sparsity(pruned) - 0.5) < 1e-3  # as the pipeline measures it
    assert outcome.metrics["recoverySteps"] == 30
    # Embeddings, pooler and classifier head are left alone (recovery trains them, but zeros none).
    assert float((pruned.classifier.weight == 0).float().mean()) == 0.0
    assert float((pruned.bert.embeddings.word_embeddings.weight == 0).float().mean()) < 0.01
    assert count_parameters(pruned) == count_parameters(original)  # saved dense
    after = accuracy(tmp_path / "out", evaluation)
    print(f"magnitude 50%: accuracy {before:.3f} -> {after:.3f} after recovery")
    assert after >= before - 0.05


def test_two_four_every_group_of_four_has_two_zeros_after_recovery(tiny_lm, tmp_path):
    outcome = prune(tiny_lm["model"], "causal-lm", {
        "method": "2:4", "iterations": 2,
        "recovery": {"datasetPath": str(tiny_lm["train"]), "steps": 10, "learningRate": 1e-2, "batchSize": 8}}, tmp_path / "out")
    original, pruned = load(tiny_lm["model"], "causal-lm"), load(tmp_path / "out", "causal-lm")
    for name, layer in block_linears(pruned).items():
        groups = layer.weight.reshape(layer.out_features, -1, 4)
        assert bool(((groups == 0).sum(-1) >= 2).all()), name  # held through 20 steps of a high learning rate
        assert not torch.equal(layer.weight, original.get_submodule(name).weight)  # recovery did train it
    assert float((pruned.lm_head.weight == 0).float().mean()) == 0.0
    assert outcome.metrics["achievedSparsity"] == pytest.approx(0.5, abs=1e-6)


def test_two_four_refuses_another_sparsity(tiny_lm, tmp_path):
    with pytest.raises(BadInputError) as error:
        prune(tiny_lm["model"], "causal-lm", {"method": "2:4", "sparsity": 0.3}, tmp_path / "out")
    assert one_sentence(str(error.value)) and "0.5" in str(error.value)
    assert not (tmp_path / "out").exists()


def _cut(model, layer_name: str, columns: list[int]) -> None:
    """Zero the input columns of one layer: the model without those heads' or channels' contributions."""
    with torch.no_grad():
        model.get_submodule(layer_name).weight[:, columns] = 0


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of `original` survive in `pruned` (structured pruning only deletes rows)."""
    return [int((original == row).all(dim=1).nonzero()[0]) for row in pruned]


def test_attention_heads_on_tiny_llama_remove_whole_kv_groups(tiny_lm, tmp_path):
    outcome = prune(tiny_lm["model"], "causal-lm", {"method": "attention-heads", "sparsity": 0.5}, tmp_path / "out")
    original, pruned = load(tiny_lm["model"], "causal-lm"), load(tmp_path / "out", "causal-lm")
    cfg = pruned.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)  # 4 q / 2 kv heads before
    attn = pruned.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (32, 16, 32)
    assert count_parameters(pruned) < count_parameters(original)
    assert outcome.metrics["headsRemoved"] == 4 and outcome.metrics["headsPerLayer"] == 2
    print(f"heads (tiny Llama): parameters {count_parameters(original)} -> {count_parameters(pruned)}")

    # Removing a key-value group is exactly cutting its query heads' columns of o_proj.
    for i, layer in enumerate(pruned.model.layers):
        kept = _kept_rows(original.model.layers[i].self_attn.q_proj.weight, layer.self_attn.q_proj.weight)
        _cut(original, f"model.layers.{i}.self_attn.o_proj", [c for c in range(64) if c not in kept])
    enc = inputs(tiny_lm["model"], ["what is the capital of france", "hello"])
    with torch.no_grad():
        torch.testing.assert_close(pruned(**enc).logits, original(**enc).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_lm", "classifier"])
def test_channels_shrink_the_mlp_and_reload(which, request, tmp_path):
    fixture = request.getfixturevalue(which)
    task = "causal-lm" if which == "tiny_lm" else "sequence-classification"
    outcome = prune(fixture["model"], task, {"method": "channels", "sparsity": 0.5}, tmp_path / "out")
    original, pruned = load(fixture["model"], task), load(tmp_path / "out", task)
    width = original.config.intermediate_size
    assert pruned.config.intermediate_size == width // 2 == outcome.metrics["intermediateSize"]
    assert outcome.metrics["channelsRemoved"] == width // 2 * original.config.num_hidden_layers
    assert count_parameters(pruned) < count_parameters(original)
    print(f"channels ({which}): parameters {count_parameters(original)} -> {count_parameters(pruned)}")

    # Removing channels is exactly cutting their columns of the layer out of the MLP.
    up, down = ("mlp.up_proj", "mlp.down_proj") if which == "tiny_lm" else ("intermediate.dense", "output.dense")
    for i, block in enumerate(pruned.base_model.layers if which == "tiny_lm" else pruned.base_model.encoder.layer):
        prefix = f"model.layers.{i}." if which == "tiny_lm" else f"bert.encoder.layer.{i}."
        kept = _kept_rows(original.get_submodule(prefix + up).weight, block.get_submodule(up).weight)
        _cut(original, prefix + down, [c for c in range(width) if c not in kept])
    enc = inputs(fixture["model"], ["the food was not good but the view was great", "hello"])
    with torch.no_grad():
        torch.testing.assert_close(pruned(**enc).logits, original(**enc).logits, rtol=1e-4, atol=1e-4)


def test_recovery_wins_back_what_channel_pruning_cost(classifier, tmp_path):
    from tests.helpers.classifier import accuracy

    evaluation = [json.loads(line) for line in Path(classifier["eval"]).read_text().splitlines()]
    settings = {"method": "channels", "sparsity": 0.75}
    prune(classifier["model"], "sequence-classification", settings, tmp_path / "cut")
    recovery = {"datasetPath": str(classifier["train"]), "steps": 20, "learningRate": 5e-5, "batchSize": 16}
    outcome = prune(classifier["model"], "sequence-classification", {**settings, "recovery": recovery}, tmp_path / "recovered")
    before, cut, after = (accuracy(path, evaluation) for path in (classifier["model"], tmp_path / "cut", tmp_path / "recovered"))
    print(f"channels 75% (MiniLM): accuracy {before:.3f} -> {cut:.3f} pruned -> {after:.3f} after {outcome.metrics['recoverySteps']:.0f} recovery steps")
    assert after >= before - 0.05
    assert after > cut


@pytest.mark.skipif(not __import__("transformers").__version__.startswith("5."), reason="transformers 4 can prune BERT heads")
def test_attention_heads_of_bert_under_transformers_5_is_bad_input(classifier, tmp_path):
    """transformers 5 dropped config.pruned_heads and derives BERT's head size from hidden_size."""
    with pytest.raises(BadInputError) as error:
        prune(classifier["model"], "sequence-classification", {"method": "attention-heads", "sparsity": 0.5}, tmp_path / "out")
    assert one_sentence(str(error.value)) and "bert" in str(error.value)


def test_an_architecture_without_known_layers_is_bad_input(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.helpers.tiny_data import corpus_texts
    from tests.helpers.tiny_models import train_tokenizer

    tokenizer = train_tokenizer(corpus_texts())
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    for method in ("attention-heads", "channels"):
        with pytest.raises(BadInputError) as error:
            prune(tmp_path / "gpt2", "causal-lm", {"method": method, "sparsity": 0.5}, tmp_path / method)
        assert one_sentence(str(error.value)) and "gpt2" in str(error.value), str(error.value)
    # Magnitude pruning needs no knowledge of the layout: GPT-2's blocks are Conv1D, not Linear, though.
    with pytest.raises(BadInputError):
        prune(tmp_path / "gpt2", "causal-lm", {"method": "magnitude"}, tmp_path / "magnitude")


def test_heads_too_few_to_remove_is_bad_input(tiny_lm, tmp_path):
    with pytest.raises(BadInputError) as error:  # 2 key-value groups: 0.2 of them is none
        prune(tiny_lm["model"], "causal-lm", {"method": "attention-heads", "sparsity": 0.2}, tmp_path / "out")
    assert one_sentence(str(error.value))


DRIVER = """
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForSequenceClassification
import transformers
from llmops_runners.compress.config import CompressConfig
from llmops_runners.compress.models import ModelRef
from llmops_runners.compress.prune import run
from llmops_runners.compress.stages import StageContext

torch.set_num_threads(1)
model, train, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
settings = {"method": "attention-heads", "sparsity": 0.5, "recovery": {"datasetPath": train, "steps": 20, "learningRate": 5e-5, "batchSize": 16}}
config = CompressConfig.model_validate({"model": {"path": str(model)}, "stages": [{"prune": settings}], "output": {"path": str(out) + "-final"}, "maxSeqLength": 64})
outcome = run(config.stages[0].prune, ModelRef(model, "sequence-classification"), StageContext(config, 0, "prune-0", out))
count = lambda m: sum(p.numel() for p in m.parameters())
reloaded = AutoModelForSequenceClassification.from_pretrained(out)
print(json.dumps({"transformers": transformers.__version__, "metrics": outcome.metrics, "before": count(AutoModelForSequenceClassification.from_pretrained(model)),
                  "after": count(reloaded), "query": list(reloaded.bert.encoder.layer[0].attention.self.query.weight.shape)}))
"""


def test_attention_heads_of_minilm_under_transformers_4(classifier, tmp_path):
    """The runner-compress-onnx image (transformers 4.57) can prune BERT heads: config.pruned_heads reloads them."""
    from tests.helpers.classifier import accuracy

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(python_of("compress-onnx")), "-c", DRIVER, str(classifier["model"]), str(classifier["train"]), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["transformers"].startswith("4.")
    assert found["query"] == [192, 384]  # 6 of 12 heads of 32 dimensions
    assert found["after"] < found["before"] and found["metrics"]["headsRemoved"] == 36
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert all(len(heads) == 6 for heads in saved["pruned_heads"].values()) and len(saved["pruned_heads"]) == 6
    evaluation = [json.loads(line) for line in Path(classifier["eval"]).read_text().splitlines()]
    print(f"heads 50% (MiniLM, transformers {found['transformers']}): parameters {found['before']} -> {found['after']}")
    # transformers 5 cannot load it (no pruned_heads), so the accuracy is measured under 4 as well.
    measured = subprocess.run([str(python_of("compress-onnx")), "-c", ACCURACY, str(tmp_path / "out"), str(classifier["eval"])],
                              env=env, capture_output=True, text=True, timeout=300)
    assert measured.returncode == 0, measured.stderr[-3000:]
    before, after = accuracy(classifier["model"], evaluation), float(measured.stdout.strip().splitlines()[-1])
    print(f"heads 50% (MiniLM): accuracy {before:.3f} -> {after:.3f} after recovery")
    assert after >= before - 0.1


ACCURACY = """
import json, sys, torch
from pathlib import Path
sys.path.insert(0, %r)
from tests.helpers.classifier import accuracy
records = [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]
print(accuracy(Path(sys.argv[1]), records))
""" % str(Path(__file__).resolve().parents[2])
