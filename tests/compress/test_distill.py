"""The distill stage, run in-process in the test venv (transformers 5) and once under transformers 4.

The claim that matters: a student of at most half the teacher's parameters keeps at least 90 % of
its accuracy, and the teacher is why: the same student (same initialisation, steps and batches)
trained on the labels alone (alpha 0) does worse. Tests run torch on one thread (see one_thread).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from llmops_runners.compress import distill as stage
from llmops_runners.compress.config import CompressConfig, StudentShape
from llmops_runners.compress.models import ModelRef, count_parameters
from llmops_runners.compress.stages import StageContext
from llmops_runners.errors import BadInputError

from conftest import python_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A student of 4 of the 6 layers at hidden size 192 (6 heads of 32): 39 % of MiniLM's parameters,
# most of them the word embeddings.
STUDENT = {"studentFromTeacher": {"numLayers": 4, "hiddenSize": 192}, "maxSteps": 80, "batchSize": 16,
           "learningRate": 2e-4, "temperature": 2.0, "alpha": 0.5}
NOISE = 1 / 3  # the share of wrong labels in the distillation data


# In-process stages run on one torch thread (conftest.one_torch_thread says why).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def distill(model: Path, task: str, settings: dict, out: Path, seed: int = 42):
    config = CompressConfig.model_validate({"model": {"path": str(model)}, "stages": [{"distill": settings}],
                                           "output": {"path": str(out / "final")}, "maxSeqLength": 64, "seed": seed})
    steps = []
    ctx = StageContext(config=config, index=0, name="distill-0", out=out, progress=lambda s, t: steps.append((s, t)))
    outcome = stage.run(config.stages[0].distill, ModelRef(model, task), ctx)
    assert steps[-1] == (settings["maxSteps"], settings["maxSteps"])
    assert outcome.model.path == out and outcome.model.task == task
    return outcome


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message and "\n" not in message


def test_half_size_student_keeps_accuracy_and_beats_the_same_student_without_teacher(classifier, tmp_path):
    """Distillation data as it often is, cheaply labelled: a third of the labels are wrong.

    The teacher knows better than those labels, and that is what distillation is for: on the clean
    labels, where the labels say all the teacher knows about this two-class task, the student
    trained with the teacher and the one trained without it both reach 100 % (the report's figures).
    """
    import random

    from transformers import AutoModelForSequenceClassification

    from tests.helpers.classifier import accuracy

    rng = random.Random(0)
    records = [json.loads(line) for line in Path(classifier["train"]).read_text().splitlines()]
    noisy = [{**r, "label": 1 - r["label"]} if rng.random() < NOISE else r for r in records]
    (tmp_path / "noisy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in noisy))
    assert 0.3 < sum(a != b for a, b in zip(records, noisy)) / len(records) < 0.37
    data = {"datasetPath": str(tmp_path / "noisy.jsonl")}
    taught = distill(classifier["model"], "sequence-classification", {**STUDENT, **data}, tmp_path / "taught")
    alone = distill(classifier["model"], "sequence-classification", {**STUDENT, **data, "alpha": 0.0}, tmp_path / "alone")

    evaluation = [json.loads(line) for line in Path(classifier["eval"]).read_text().splitlines()]
    teacher_accuracy = accuracy(classifier["model"], evaluation)
    taught_accuracy, alone_accuracy = accuracy(tmp_path / "taught", evaluation), accuracy(tmp_path / "alone", evaluation)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "taught")
    teacher = AutoModelForSequenceClassification.from_pretrained(classifier["model"])
    ratio = count_parameters(student) / count_parameters(teacher)
    print(f"distill: teacher {teacher_accuracy:.3f}, student {taught_accuracy:.3f}, same student without the teacher "
          f"{alone_accuracy:.3f}; parameters {count_parameters(student)} / {count_parameters(teacher)} = {ratio:.2f}; "
          f"loss {taught.metrics['distillLossStart']:.3f} -> {taught.metrics['distillLossEnd']:.3f}")
    assert ratio <= 0.5
    assert taught.metrics["studentParameters"] == count_parameters(student)
    assert taught.metrics["teacherParameters"] == count_parameters(teacher)
    assert taught_accuracy >= 0.9 * teacher_accuracy
    assert taught_accuracy > alone_accuracy
    assert taught.metrics["distillLossEnd"] < taught.metrics["distillLossStart"]


def _batches(model: Path, task: str, data: str) -> list[dict]:
    from itertools import islice

    from transformers import AutoTokenizer

    from llmops_runners.compress import examples

    return list(islice(examples.training_batches(task, AutoTokenizer.from_pretrained(model), data, 64, 16, 0), 4))


def test_student_from_teacher_starts_from_the_teachers_layers_and_most_used_features(classifier):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(classifier["model"])
    batches = _batches(classifier["model"], "sequence-classification", classifier["train"])
    student = stage.make_student(_settings(StudentShape(num_layers=3, hidden_size=192, intermediate_size=768)), teacher,
                                 "sequence-classification", batches)
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (3, 192, 6, 768)
    order = stage.residual_order(teacher, batches)
    assert not torch.equal(order[:192].sort().values, torch.arange(192))  # not simply the first features
    # Layers 0, 2 and 5 of 6 (the first and the last kept): the first 6 heads whole, the first 768
    # MLP channels, and on every residual axis the same 192 features.
    for j, i in enumerate([0, 2, 5]):
        mine, theirs = student.bert.encoder.layer[j], teacher.bert.encoder.layer[i]
        assert torch.equal(mine.attention.self.query.weight, theirs.attention.self.query.weight[:192, order[:192]])
        assert torch.equal(mine.attention.output.dense.weight, theirs.attention.output.dense.weight[order[:192], :192])
        assert torch.equal(mine.intermediate.dense.weight, theirs.intermediate.dense.weight[:768, order[:192]])
        assert torch.equal(mine.output.dense.weight, theirs.output.dense.weight[order[:192], :768])
        assert torch.equal(mine.output.LayerNorm.weight, theirs.output.LayerNorm.weight[order[:192]])
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight[:, order[:192]])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, order[:192]])


@pytest.mark.parametrize("which", ["classifier", "tiny_lm"])
def test_reordering_the_residual_stream_leaves_the_teacher_unchanged(which, request):
    """The rules that tell residual axes from heads are right: the teacher, all of its features in a
    shuffled order, computes exactly what it did."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    fixture = request.getfixturevalue(which)
    cls = AutoModelForCausalLM if which == "tiny_lm" else AutoModelForSequenceClassification
    teacher, shuffled = cls.from_pretrained(fixture["model"]).eval(), cls.from_pretrained(fixture["model"]).eval()
    torch.manual_seed(0)
    order = torch.randperm(teacher.config.hidden_size)
    stage._initialise(shuffled, teacher, list(range(teacher.config.num_hidden_layers)), order)
    assert not torch.equal(shuffled.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    enc = dict(AutoTokenizer.from_pretrained(fixture["model"])(["the food was not good but the view was great", "hi"],
                                                               return_tensors="pt", padding=True))
    with torch.no_grad():
        torch.testing.assert_close(shuffled(**enc).logits, teacher(**enc).logits, rtol=1e-4, atol=1e-4)


def _settings(shape: StudentShape):
    from llmops_runners.compress.config import DistillSettings

    return DistillSettings(student_from_teacher=shape, dataset_path="unused")


def test_student_of_a_gqa_llama_keeps_head_size_and_grouping(tiny_lm):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm["model"])  # 2 layers, hidden 64, 4 heads of 16, 2 kv heads
    batches = _batches(tiny_lm["model"], "causal-lm", tiny_lm["train"])
    student = stage.make_student(_settings(StudentShape(num_layers=1, hidden_size=32)), teacher, "causal-lm", batches)
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (1, 2, 1, 16)
    theirs, order = teacher.model.layers[1].self_attn, stage.residual_order(teacher, batches)  # one layer of two: the last
    assert torch.equal(student.model.layers[0].self_attn.k_proj.weight, theirs.k_proj.weight[:16, order[:32]])
    assert torch.equal(student.model.layers[0].self_attn.o_proj.weight, theirs.o_proj.weight[order[:32], :32])
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight[:, order[:32]])


def test_loss_counts_only_labelled_positions():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, -100, -100, -100]])
    loss = stage.distillation_loss(student, teacher, labels, "causal-lm", 2.0, 0.5)
    # Positions whose next token has no label (prompt, padding) change nothing.
    unlabelled = (labels[:, 1:] == -100).nonzero().tolist()
    student2, teacher2 = student.clone(), teacher.clone()
    for row, col in unlabelled:
        student2[row, col] += 5 * torch.randn(11)
        teacher2[row, col] += 5 * torch.randn(11)
    assert torch.allclose(stage.distillation_loss(student2, teacher2, labels, "causal-lm", 2.0, 0.5), loss)
    # alpha 0 is the cross-entropy of the labelled next tokens; a student equal to its teacher has no KL.
    keep = labels[:, 1:] != -100
    ce = torch.nn.functional.cross_entropy(student[:, :-1][keep], labels[:, 1:][keep])
    assert torch.allclose(stage.distillation_loss(student, teacher, labels, "causal-lm", 2.0, 0.0), ce)
    assert float(stage.distillation_loss(teacher, teacher, labels, "causal-lm", 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(stage.distillation_loss(student, teacher, labels, "causal-lm", 3.0, 1.0)) > 0


def test_causal_lm_student_of_tiny_llama_trains_and_reloads(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    outcome = distill(tiny_lm["model"], "causal-lm", {"datasetPath": str(tiny_lm["train"]), "maxSteps": 30,
                                                      "batchSize": 8, "learningRate": 3e-3}, tmp_path / "out")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm["model"])
    assert student.config.num_hidden_layers == 1 == outcome.metrics["studentLayers"]  # half of 2, by default
    assert count_parameters(student) == outcome.metrics["studentParameters"] < outcome.metrics["teacherParameters"] == count_parameters(teacher)
    assert outcome.metrics["distillLossEnd"] < outcome.metrics["distillLossStart"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")  # the teacher's, saved beside the student
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_lm["model"]).get_vocab()
    enc = tokenizer("hello", return_tensors="pt")
    generated = student.generate(**enc, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > enc["input_ids"].shape[1]


def test_student_config_is_built_with_the_teachers_vocabulary(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    student_config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "num_key_value_heads": 1}
    distill(tiny_lm["model"], "causal-lm", {"studentConfig": student_config, "datasetPath": str(tiny_lm["train"]),
                                            "maxSteps": 3, "batchSize": 4}, tmp_path / "out")
    student, teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "out"), AutoModelForCausalLM.from_pretrained(tiny_lm["model"])
    assert student.config.vocab_size == teacher.config.vocab_size and student.config.hidden_size == 32


@pytest.mark.parametrize("student, words", [
    ({"studentConfig": {"model_type": "llama", "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 1, "num_attention_heads": 2}}, "vocabulary"),
    ({"studentConfig": {"hidden_size": 32}}, "model_type"),
    ({"studentConfig": {"model_type": "no-such-model"}}, "studentConfig"),
    ({"studentFromTeacher": {"numLayers": 3}}, "layers"),
    ({"studentFromTeacher": {"hiddenSize": 48}}, "multiple of 32"),
])
def test_a_student_that_cannot_learn_from_the_teacher_is_bad_input(tiny_lm, tmp_path, student, words):
    with pytest.raises(BadInputError) as error:
        distill(tiny_lm["model"], "causal-lm", {**student, "datasetPath": str(tiny_lm["train"]), "maxSteps": 2}, tmp_path / "out")
    assert one_sentence(str(error.value)) and words in str(error.value), str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_student_for_another_task_is_bad_input(tiny_lm, classifier, tmp_path):
    with pytest.raises(BadInputError) as error:
        distill(tiny_lm["model"], "causal-lm", {"studentPath": str(classifier["model"]), "datasetPath": str(tiny_lm["train"]),
                                                "maxSteps": 2}, tmp_path / "out")
    assert one_sentence(str(error.value)) and "sequence-classification" in str(error.value)


DRIVER = """
import json, sys, torch
from pathlib import Path
import transformers
from transformers import AutoModelForCausalLM
from llmops_runners.demo import corpus_texts, instruction_examples, make_tiny_model, write_jsonl
from llmops_runners.compress.config import CompressConfig
from llmops_runners.compress.models import ModelRef
from llmops_runners.compress.distill import run
from llmops_runners.compress.stages import StageContext

torch.set_num_threads(1)
root = Path(sys.argv[1])
teacher = make_tiny_model(root / "teacher", corpus_texts())  # made here: transformers 4 cannot read a tokenizer saved by 5
train = write_jsonl(root / "train.jsonl", instruction_examples()[0])
settings = {"studentFromTeacher": {"numLayers": 1, "hiddenSize": 32}, "datasetPath": str(train), "maxSteps": 30, "batchSize": 8, "learningRate": 3e-3}
config = CompressConfig.model_validate({"model": {"path": str(teacher)}, "stages": [{"distill": settings}], "output": {"path": str(root / "final")}, "maxSeqLength": 64})
outcome = run(config.stages[0].distill, ModelRef(teacher, "causal-lm"), StageContext(config, 0, "distill-0", root / "out"))
student = AutoModelForCausalLM.from_pretrained(root / "out")
print(json.dumps({"transformers": transformers.__version__, "metrics": outcome.metrics, "hidden": student.config.hidden_size,
                  "parameters": sum(p.numel() for p in student.parameters())}))
"""


def test_causal_lm_distill_under_transformers_4(tmp_path):
    """The runner-compress-onnx image (transformers 4.57) runs the same stage."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([str(python_of("compress-onnx")), "-c", DRIVER, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["transformers"].startswith("4.")
    assert found["hidden"] == 32 and found["parameters"] == found["metrics"]["studentParameters"] < found["metrics"]["teacherParameters"]
    assert found["metrics"]["distillLossEnd"] < found["metrics"]["distillLossStart"]
