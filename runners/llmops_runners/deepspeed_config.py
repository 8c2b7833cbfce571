"""Build the DeepSpeed ZeRO config from the job spec.

Values are concrete (not "auto") and mirror the Trainer's own arguments, so the file written
next to the checkpoints documents exactly what ran; the Trainer checks they agree.
"""
from __future__ import annotations

BUCKET_SIZE = 50_000_000  # elements; DeepSpeed's own default order of magnitude


def build_deepspeed_config(ds_cfg, training_cfg, precision: str, world_size: int = 1) -> dict:
    stage = ds_cfg.zero_stage
    zero: dict = {"stage": stage}
    if stage >= 1:
        zero["reduce_bucket_size"] = BUCKET_SIZE
    if stage >= 2:
        # Overlap gradient reduction with the backward pass; contiguous buffers avoid fragmentation.
        zero.update(overlap_comm=True, contiguous_gradients=True, allgather_bucket_size=BUCKET_SIZE)
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=BUCKET_SIZE,
            stage3_param_persistence_threshold=100_000,
            # Without this the saved model would hold only this rank's shard.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if ds_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds_cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    micro = training_cfg.per_device_batch_size
    accumulation = training_cfg.gradient_accumulation_steps
    config: dict = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": training_cfg.max_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the runner reports progress itself
        "wall_clock_breakdown": False,
    }
    if ds_cfg.offload_optimizer:
        # An offloaded optimizer must be DeepSpeed's CPU Adam; the Trainer's scheduler still drives it.
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": training_cfg.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": training_cfg.weight_decay}}
    return config
