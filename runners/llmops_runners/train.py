"""One fine-tuning run: data, model, Trainer, resume, save. Returns the summary the entry point reports."""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

from . import artifacts
from .config import RunnerConfig
from .data import PadCollator, Splits, load_splits
from .deepspeed_config import build_deepspeed_config
from .launch import is_local_main_process, world_size
from .metrics import MetricsCallback, TrainingGauges
from .modeling import apply_method, count_parameters, load_base_model, load_tokenizer, resolve_precision

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_path: str
    global_step: int
    metrics: dict
    extra: dict = field(default_factory=dict)


class ValidationEarlyStopping(TrainerCallback):
    """Stop when the validation loss has not improved by `threshold` for `patience` evaluations.

    Unlike transformers' EarlyStoppingCallback it does not require load_best_model_at_end,
    which would tie checkpoint and evaluation intervals together.
    """

    def __init__(self, patience: int, threshold: float):
        self.patience, self.threshold = patience, threshold
        self.best = math.inf
        self.bad_evaluations = 0
        self.stopped_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        if loss < self.best - self.threshold:
            self.best, self.bad_evaluations = loss, 0
        else:
            self.bad_evaluations += 1
            if self.bad_evaluations >= self.patience:
                self.stopped_at = state.global_step
                control.should_training_stop = True
                log.info("early stopping at step %d: no validation improvement in %d evaluations",
                         state.global_step, self.patience)


class ResumeProbe(TrainerCallback):
    """Records where training really started: global step and the optimizer's own step count."""

    def __init__(self):
        self.start_step = 0
        self.optimizer_step: int | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.start_step = state.global_step
        self.optimizer_step = _optimizer_step(optimizer)


def _optimizer_step(optimizer) -> int | None:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    for state in getattr(inner, "state", {}).values():
        if "step" in state:
            return int(state["step"])
    return None


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint; one cut short by a kill has no trainer_state.json and is skipped."""
    if not checkpoint_dir.is_dir():
        return None
    found = []
    for child in checkpoint_dir.iterdir():
        name = child.name
        if name.startswith("checkpoint-") and name[11:].isdigit() and (child / "trainer_state.json").is_file():
            found.append((int(name[11:]), child))
    return max(found)[1] if found else None


def training_arguments(cfg: RunnerConfig, precision: str, checkpoint_dir: Path, has_validation: bool,
                       resuming: bool) -> TrainingArguments:
    t, ckpt = cfg.training, cfg.checkpointing
    deepspeed = (build_deepspeed_config(cfg.deepspeed, t, precision, world_size())
                 if cfg.deepspeed is not None else None)
    if has_validation:
        eval_kwargs = {"eval_strategy": "steps", "eval_steps": t.eval_steps} if t.eval_steps else {"eval_strategy": "epoch"}
        # A baseline validation loss makes the improvement visible; a resumed run already has one.
        eval_kwargs["eval_on_start"] = not resuming
    else:
        eval_kwargs = {"eval_strategy": "no"}
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        save_strategy="steps",
        save_steps=ckpt.every_steps,
        save_total_limit=ckpt.keep_last,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(),  # pods get log lines; a terminal gets a progress bar
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        deepspeed=deepspeed,
        **eval_kwargs,
        **_checkpointing_kwargs(t.gradient_checkpointing),
    )


def _checkpointing_kwargs(enabled: bool) -> dict:
    """Activation checkpointing, under whichever name this transformers version uses."""
    if not enabled:
        return {}
    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    # Non-reentrant checkpointing works with frozen inputs (PEFT) without enable_input_require_grads.
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def peak_memory() -> dict:
    """Peak memory of this process: RSS on any machine, plus torch's CUDA peak per GPU when there is one."""
    import resource

    peaks = {"peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB
    if torch.cuda.is_available():
        peaks["peakCudaBytes"] = [torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())]
    return peaks


def _start_deepspeed_world() -> None:
    """Start DeepSpeed's process group now, before the model loads.

    ZeRO-3 partitions the model while from_pretrained builds it, and DeepSpeed reads the world size
    from its own comm layer (to check the batch size) before it would start that layer itself. A lone
    process gets the env torchrun would give it, because DeepSpeed always needs torch.distributed.
    """
    import socket

    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed()


def final_metrics(trainer, train_output, progress, has_validation: bool, trainable: int, total: int) -> dict:
    metrics = {"trainLoss": train_output.training_loss, "trainRuntimeSeconds": train_output.metrics.get("train_runtime"),
               "trainableParameters": trainable, "totalParameters": total,
               "trainablePercent": round(100 * trainable / total, 4), **progress.throughput, **peak_memory()}
    evals = [(e.get("step"), e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    if has_validation:
        # Reuse an evaluation of the final weights when the schedule already made one.
        final = evals[-1][1] if evals and evals[-1][0] == trainer.state.global_step else None
        metrics["evalLoss"] = final if final is not None else trainer.evaluate()["eval_loss"]
        if evals:
            metrics["evalLossStart"] = evals[0][1]  # the step-0 baseline (kept across resumes)
    return metrics


@dataclass
class Prepared:
    """What a run needs before the Trainer exists."""
    precision: str
    tokenizer: PreTrainedTokenizerBase
    splits: Splits
    resume_from: Path | None
    args: TrainingArguments
    model: torch.nn.Module


def prepare(cfg: RunnerConfig) -> Prepared:
    """Data, TrainingArguments and the model with the method applied, in the order ZeRO-3 needs."""
    t = cfg.training
    if cfg.deepspeed is not None:
        _start_deepspeed_world()
    precision = resolve_precision(t.precision)
    set_seed(t.seed)
    # The operator names the same place in LLMOPS_CHECKPOINT_DIR; honouring it keeps the two in step.
    checkpoint_dir = Path(os.environ.get("LLMOPS_CHECKPOINT_DIR") or Path(cfg.output.path) / artifacts.CHECKPOINT_DIR)

    tokenizer = load_tokenizer(cfg.model)
    splits = load_splits(tokenizer, cfg.dataset, t.max_seq_length, t.seed)
    log.info("data: %d training and %d validation examples (%s format)",
             len(splits.train), len(splits.validation or []), splits.format)

    resume_from = latest_checkpoint(checkpoint_dir) if cfg.checkpointing.resume else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    # The arguments come before the model: with a DeepSpeed ZeRO-3 config they register it with
    # transformers (for as long as they live), and only then does from_pretrained partition the
    # parameters across ranks while loading instead of loading the whole model on every rank.
    args = training_arguments(cfg, precision, checkpoint_dir, splits.validation is not None, resume_from is not None)
    model = load_base_model(cfg, precision)
    model = apply_method(cfg, model, gradient_checkpointing=t.gradient_checkpointing)
    return Prepared(precision, tokenizer, splits, resume_from, args, model)


def run(cfg: RunnerConfig) -> RunResult:
    t = cfg.training
    output_dir = Path(cfg.output.path)
    ready = prepare(cfg)
    tokenizer, splits, resume_from = ready.tokenizer, ready.splits, ready.resume_from
    trainable, total = count_parameters(ready.model)
    log.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)

    gauges = TrainingGauges(cfg.job_name)
    if is_local_main_process():
        gauges.serve(cfg.metrics.port)
    samples_per_step = t.per_device_batch_size * t.gradient_accumulation_steps * world_size()
    progress, probe = MetricsCallback(gauges, samples_per_step), ResumeProbe()
    callbacks = [progress, probe]
    stopper = None
    if t.early_stopping and splits.validation is not None:
        stopper = ValidationEarlyStopping(t.early_stopping.patience, t.early_stopping.threshold)
        callbacks.append(stopper)

    trainer = Trainer(model=ready.model, args=ready.args, train_dataset=splits.train, eval_dataset=splits.validation,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # MetricsCallback already writes a readable line per log
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    metrics = final_metrics(trainer, train_output, progress, splits.validation is not None, trainable, total)
    extra = {"precision": ready.precision, "resumedFromStep": probe.start_step if resume_from else None,
             "resumedOptimizerStep": probe.optimizer_step if resume_from else None,
             "earlyStoppedAtStep": stopper.stopped_at if stopper else None,
             "deepspeedZeroStage": cfg.deepspeed.zero_stage if cfg.deepspeed else None}

    # save_model handles PEFT adapters and gathers ZeRO-3 shards; it must run on every rank.
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        if cfg.output.merge_lora and cfg.method in ("lora", "qlora"):
            extra["mergedPath"] = str(artifacts.save_merged_lora(cfg, output_dir, tokenizer))
        elif cfg.output.merge_lora:
            log.info("output.mergeLora ignored: method %r has no LoRA adapter to merge", cfg.method)
        artifacts.write_manifest(cfg, output_dir, metrics, {**extra, "globalStep": trainer.state.global_step,
                                                              "dataFormat": splits.format})
    return RunResult(str(output_dir), trainer.state.global_step, metrics, extra)
