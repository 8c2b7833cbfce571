"""Pure functions: DeepSpeed config per ZeRO stage, torchrun launch plan, termination-message size."""
import json
import time

import pytest

from llmops_runners.config import DeepSpeedSettings, TrainingSettings
from llmops_runners.deepspeed_config import build_deepspeed_config
from llmops_runners.errors import BadInputError, RunnerFailure
from llmops_runners.launch import plan_from_env, wait_for_address
from llmops_runners.termination import MAX_BYTES, build_message, fit_to_limit

TRAINING = TrainingSettings(perDeviceBatchSize=4, gradientAccumulationSteps=8, maxGradNorm=0.5, learningRate=1e-4)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_for_each_stage(stage):
    ds = build_deepspeed_config(DeepSpeedSettings(zeroStage=stage), TRAINING, "bf16", world_size=2)
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 8
    assert ds["train_batch_size"] == 4 * 8 * 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ("overlap_comm" in zero) == (stage >= 2)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    json.dumps(ds)  # must serialise: the Trainer and the launcher take it as JSON


def test_deepspeed_offload_and_fp16():
    ds = build_deepspeed_config(DeepSpeedSettings(zeroStage=3, offloadOptimizer=True, offloadParams=True),
                                TRAINING, "fp16")
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["fp16"]["enabled"] and not ds["bf16"]["enabled"]
    assert ds["optimizer"]["params"]["lr"] == 1e-4  # offloaded optimizer is DeepSpeed's own


def test_single_process_is_not_relaunched():
    assert plan_from_env({}) is None
    assert plan_from_env({"NPROC_PER_NODE": "1", "NNODES": "1"}) is None
    assert plan_from_env({"NPROC_PER_NODE": "4", "LOCAL_RANK": "0"}) is None  # already a torchrun worker


def test_multi_node_plan_builds_torchrun_command():
    env = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8", "MASTER_ADDR": "job-0.svc", "MASTER_PORT": "29400"}
    plan = plan_from_env(env)
    cmd = plan.command("/etc/llmops/config.json")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nnodes=2", "--node-rank=1", "--nproc-per-node=8", "--master-addr=job-0.svc", "--master-port=29400"):
        assert flag in cmd
    assert cmd[-4:] == ["-m", "llmops_runners.finetune", "--config", "/etc/llmops/config.json"]


def test_master_address_wait_is_configurable():
    env = {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "1", "MASTER_ADDR": "job-0.svc"}
    assert plan_from_env(env).master_addr_wait_s == 300
    assert plan_from_env({**env, "LLMOPS_MASTER_ADDR_WAIT_SECONDS": "5"}).master_addr_wait_s == 5
    with pytest.raises(BadInputError, match="LLMOPS_MASTER_ADDR_WAIT_SECONDS"):
        plan_from_env({**env, "LLMOPS_MASTER_ADDR_WAIT_SECONDS": "soon"})


def test_master_address_that_resolves_is_not_waited_for():
    started = time.monotonic()
    wait_for_address("localhost", timeout_s=30)
    assert time.monotonic() - started < 5


def test_master_address_that_never_resolves_fails_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(RunnerFailure) as caught:
        wait_for_address("job-0.job-workers.llmops-test.invalid", timeout_s=1)
    assert 1 <= time.monotonic() - started < 10
    assert caught.value.reason == "RendezvousUnresolved" and caught.value.exit_code == 1
    assert "job-0.job-workers.llmops-test.invalid" in str(caught.value)


def test_world_size_alone_implies_processes_per_node():
    plan = plan_from_env({"WORLD_SIZE": "4"})
    assert plan.nproc_per_node == 4 and plan.nnodes == 1


def test_multi_node_without_master_is_bad_input():
    with pytest.raises(BadInputError, match="MASTER_ADDR"):
        plan_from_env({"NNODES": "2", "NPROC_PER_NODE": "1"})


def test_termination_message_stays_under_kubernetes_limit():
    body = build_message("Failed", "TrainingFailed", "x" * 10_000,
                         metrics={f"m{i}": i for i in range(2000)}, output_path="/out", global_step=7)
    text = fit_to_limit(body)
    assert len(text.encode()) <= MAX_BYTES
    parsed = json.loads(text)
    assert parsed["status"] == "Failed" and parsed["globalStep"] == 7 and parsed["outputPath"] == "/out"


def test_small_termination_message_is_untouched():
    body = build_message("Succeeded", "Completed", "ok.", metrics={"evalLoss": 1.5})
    assert json.loads(fit_to_limit(body)) == body


def test_early_stopping_counts_evaluations_without_improvement():
    from transformers import TrainerControl, TrainerState

    from llmops_runners.train import ValidationEarlyStopping

    stopper, state, control = ValidationEarlyStopping(patience=2, threshold=0.1), TrainerState(), TrainerControl()
    for step, loss in enumerate([3.0, 2.0, 1.95, 2.5], start=1):  # 1.95 is within the threshold of 2.0
        state.global_step = step * 10
        stopper.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        if step < 4:
            assert not control.should_training_stop, step
    assert control.should_training_stop and stopper.stopped_at == 40


def test_latest_checkpoint_skips_one_cut_short(tmp_path):
    from llmops_runners.train import latest_checkpoint

    assert latest_checkpoint(tmp_path / "none") is None
    for step, complete in [(10, True), (20, True), (30, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint-20"


def test_launcher_keeps_worker_exit_class(tmp_path):
    from llmops_runners.finetune import _worker_outcome

    path = tmp_path / "termination-log"
    path.write_text(json.dumps(build_message("Failed", "InvalidInput", "Dataset file 'x' does not exist.")))
    assert _worker_outcome(str(path), 1) == 2
    path.write_text(json.dumps(build_message("Failed", "TrainingFailed", "Training failed with OSError.")))
    assert _worker_outcome(str(path), 1) == 1
    path.unlink()
    assert _worker_outcome(str(path), -9) == 1
    assert json.loads(path.read_text())["reason"] == "WorkerFailed"


def test_token_comes_from_the_named_env_var_only(monkeypatch):
    from llmops_runners.config import ModelSource
    from llmops_runners.modeling import _source_kwargs

    monkeypatch.setenv("MY_TOKEN", "secret")
    assert _source_kwargs(ModelSource(path="org/model", revision="v1", tokenEnv="MY_TOKEN")) == {
        "revision": "v1", "token": "secret"}
    assert _source_kwargs(ModelSource(path="org/model", tokenEnv=None)) == {}
