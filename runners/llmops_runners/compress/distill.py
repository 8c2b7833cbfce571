"""distill: train a smaller student to match the stage's input model (the teacher).

The student is one of
- a model folder (studentPath),
- a transformers config (studentConfig), built from scratch: the teacher's vocabulary size, labels
  and special tokens are filled in where the config leaves them out,
- the teacher's own config made smaller (studentFromTeacher; the default, at half the layers),
  initialised from the teacher: student layer j is teacher layer picked[j], spread evenly from the
  first to the last. A smaller hidden_size keeps the features of the teacher's residual stream
  that carry the most signal (mean square activation on a few batches of the distillation data):
  the same features on every axis that is the residual stream, so the kept part of the teacher
  computes what it did, LayerNorm included. Cutting the first features instead leaves a student
  that has to learn the task again. The head size is kept and the leading heads are taken whole
  (the number of heads shrinks with hidden_size); a smaller intermediate_size keeps the leading
  MLP channels.

Whatever the student, it reads the teacher's tokenizer and is saved with it, so the vocabularies
must be the same. The loss is Hinton's: alpha * T^2 * KL(teacher || student) on the logits
softened by the temperature T, plus (1 - alpha) * cross-entropy on the labels; for a causal LM
both count only the positions that have a label (the replies, not prompts or padding).
"""
from __future__ import annotations

import copy
import inspect
import itertools
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE_INDEX
from ..errors import BadInputError
from . import examples, models
from .models import ModelRef, auto_class, read_config, task_of_config
from .stages import StageContext, StageOutcome

REPORTED = 10  # distillLossStart/End: mean of the first / last 10 steps (a quarter of a short run), less noisy than one batch
PROBE_BATCHES = 4  # batches that rank the teacher's residual features when the student is narrower
# The rows of q, k and v and the columns of o are heads, not residual features, even where their
# number equals hidden_size (BERT, Llama without GQA): they are taken as whole heads.
HEAD_ROWS = re.compile(r"\.(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)$")
HEAD_COLUMNS = re.compile(r"\.(o_proj|attention\.output\.dense)\.weight$")
EMBEDDING_ROWS = re.compile(r"(embeddings|embed_tokens)\.weight$")  # rows are tokens or positions, whatever their number


def run(settings, model: ModelRef, ctx: StageContext) -> StageOutcome:
    torch.manual_seed(ctx.config.seed)
    teacher, tokenizer = models.load(model)
    batches = lambda: examples.training_batches(model.task, tokenizer, settings.dataset_path,  # noqa: E731
                                                ctx.config.max_seq_length, settings.batch_size, ctx.config.seed)
    student = make_student(settings, teacher, model.task, list(itertools.islice(batches(), PROBE_BATCHES)))
    _check_compatible(student, teacher, model.task)
    data = batches()
    accepts = set(inspect.signature(student.forward).parameters)  # a BERT teacher feeds token_type_ids, a Llama student has none
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate)
    # Warm up over the first tenth, then decay linearly to zero: full-rate steps on a student just cut
    # from its teacher can knock it into predicting one class, and a constant rate leaves the last
    # steps, the ones kept, as noisy as the first.
    warmup = max(1, settings.max_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * (1 - step / settings.max_steps))
    losses = []
    student.train()
    for step in range(1, settings.max_steps + 1):
        batch = next(data)
        labels = batch.pop("labels")
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        student_logits = student(**{k: v for k, v in batch.items() if k in accepts}).logits
        loss = distillation_loss(student_logits, teacher_logits, labels, model.task, settings.temperature, settings.alpha)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # nor may one bad batch undo what the student kept
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        ctx.progress(step, settings.max_steps)
    student.eval()
    models.save(student, tokenizer, ctx.out)
    span = max(1, min(REPORTED, len(losses) // 4))
    return StageOutcome(model.with_path(ctx.out), {
        "distillLossStart": _mean(losses[:span]),
        "distillLossEnd": _mean(losses[-span:]),
        "teacherParameters": float(models.count_parameters(teacher)),
        "studentParameters": float(models.count_parameters(student)),
        "studentLayers": float(student.config.num_hidden_layers),
    })


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, task: str,
                      temperature: float, alpha: float) -> torch.Tensor:
    if task == "causal-lm":  # logits at t predict the token at t + 1; only labelled tokens count
        labels = labels[:, 1:]
        keep = labels != IGNORE_INDEX
        student, teacher, labels = student[:, :-1][keep], teacher[:, :-1][keep], labels[keep]
        if not len(labels):  # a batch of prompts without replies teaches nothing
            return student.sum() * 0.0
    task_loss = F.cross_entropy(student, labels)
    # KL(teacher || student) over the softened distributions, one row per example or token; T^2
    # keeps its gradients on the scale of the task loss's whatever the temperature (Hinton et al.).
    kl = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * temperature ** 2 * kl + (1 - alpha) * task_loss


def make_student(settings, teacher: nn.Module, task: str, batches: list[dict]) -> nn.Module:
    if settings.student_path:
        found = task_of_config(read_config(Path(settings.student_path)), settings.student_path)
        if found != task:
            raise BadInputError(f"The student in {settings.student_path} is a {found} model and the teacher a {task} model; they must do the same task.")
        return auto_class(task).from_pretrained(settings.student_path, dtype=torch.float32)
    if settings.student_config is not None:
        student = _from_config(settings.student_config, teacher, task)
    else:
        student = _from_teacher(settings.student_from_teacher, teacher, batches)
    if getattr(teacher, "generation_config", None) is not None:  # a causal LM's pad and end tokens
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def _from_config(given: dict, teacher: nn.Module, task: str) -> nn.Module:
    from transformers import CONFIG_MAPPING, AutoConfig

    settings = dict(given)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise BadInputError("distill.studentConfig needs a model_type (a transformers model type such as llama or bert).")
    if model_type not in CONFIG_MAPPING:
        raise BadInputError(f"distill.studentConfig names the model_type {model_type!r}, which this image's transformers does not know.")
    inherited = ["vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"]
    if task == "sequence-classification":
        inherited += ["id2label", "label2id"]
    for key in inherited:
        settings.setdefault(key, getattr(teacher.config, key, None))
    try:
        config = AutoConfig.for_model(model_type, **settings)
        return auto_class(task).from_config(config)
    except (ValueError, TypeError, KeyError) as error:
        reason = str(error).splitlines()[0].split(". ")[0].rstrip(".")
        raise BadInputError(f"distill.studentConfig does not make a {task} model: {reason}.") from None


def _from_teacher(shape, teacher: nn.Module, batches: list[dict]) -> nn.Module:
    """The teacher's config made smaller, its weights taken from the teacher where they fit."""
    config = copy.deepcopy(teacher.config)
    layers = config.num_hidden_layers
    count = shape.num_layers or max(1, layers // 2)
    if count > layers:
        raise BadInputError(f"studentFromTeacher.numLayers {count} is more than the teacher's {layers} layers.")
    picked = [round(j * (layers - 1) / (count - 1)) for j in range(count)] if count > 1 else [layers - 1]
    config.num_hidden_layers = count
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (sliding, full)
        config.layer_types = [config.layer_types[i] for i in picked]
    if getattr(config, "pruned_heads", None):  # a BERT whose heads were pruned (transformers 4)
        config.pruned_heads = {j: config.pruned_heads[i] for j, i in enumerate(picked) if i in config.pruned_heads}
    if shape.hidden_size and shape.hidden_size != config.hidden_size:
        _shrink_hidden(config, shape.hidden_size)
    if shape.intermediate_size:
        config.intermediate_size = shape.intermediate_size
    student = type(teacher)(config)
    hidden = teacher.config.hidden_size
    narrower = config.hidden_size < hidden and any(HEAD_ROWS.search(name) for name in teacher.state_dict())
    # An attention layout not named above keeps the leading features: its heads could not be told apart.
    order = residual_order(teacher, batches) if narrower else torch.arange(hidden)
    _initialise(student, teacher, picked, order)
    return student


def _shrink_hidden(config, hidden: int) -> None:
    """Keep the head size, so the leading rows of q, k and v are whole heads of the teacher's."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    group = heads // kv_heads
    if hidden % (head_dim * group) or getattr(config, "pruned_heads", None):
        raise BadInputError(f"studentFromTeacher.hiddenSize {hidden} must be a multiple of {head_dim * group} "
                            f"(the teacher's head size{' times its query heads per key-value head' if group > 1 else ''}).")
    config.num_attention_heads = hidden // head_dim
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = config.num_attention_heads // group
    if hasattr(config, "head_dim"):
        config.head_dim = head_dim
    config.hidden_size = hidden


@torch.no_grad()
def residual_order(teacher: nn.Module, batches: list[dict]) -> torch.Tensor:
    """The teacher's residual features, the most used first: mean square over layers and real tokens."""
    energy = torch.zeros(teacher.config.hidden_size)
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        real = inputs["attention_mask"].bool()
        for states in teacher(**inputs, output_hidden_states=True).hidden_states:
            energy += states[real].pow(2).mean(0)
    return torch.argsort(energy, descending=True)


def _residual_axes(name: str, shape: torch.Size, hidden: int) -> set[int]:
    return {axis for axis, size in enumerate(shape) if size == hidden
            and not (axis == 0 and (HEAD_ROWS.search(name) or EMBEDDING_ROWS.search(name)))
            and not (axis == 1 and HEAD_COLUMNS.search(name))}


@torch.no_grad()
def _initialise(student: nn.Module, teacher: nn.Module, picked: list[int], order: torch.Tensor) -> None:
    """Copy every teacher tensor into the student's: layers renumbered, residual axes in `order`, others cut."""
    prefix = _blocks_name(teacher) + "."
    source, hidden = teacher.state_dict(), teacher.config.hidden_size
    for name, tensor in student.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            name = f"{prefix}{picked[int(index)]}.{rest}"
        found = source.get(name)
        if found is None or found.dim() != tensor.dim() or any(s > t for s, t in zip(tensor.shape, found.shape)):
            continue  # the student's random init stays
        residual = _residual_axes(name, found.shape, hidden)
        for axis, size in enumerate(tensor.shape):
            found = found.index_select(axis, order[:size]) if axis in residual else found.narrow(axis, 0, size)
        tensor.copy_(found)


def _blocks_name(net: nn.Module) -> str:
    lists = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))[0]


def _check_compatible(student: nn.Module, teacher: nn.Module, task: str) -> None:
    have, want = student.get_input_embeddings().num_embeddings, teacher.get_input_embeddings().num_embeddings
    if have != want:
        raise BadInputError(f"The student's vocabulary has {have} tokens and the teacher's {want}; "
                            "the student reads the teacher's tokenizer, so they must be the same.")
    if task == "sequence-classification" and student.config.num_labels != teacher.config.num_labels:
        raise BadInputError(f"The student has {student.config.num_labels} labels and the teacher {teacher.config.num_labels}; they must be the same.")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
