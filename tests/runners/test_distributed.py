"""The entry point re-launches itself under torchrun (two CPU processes, gloo) and keeps exit classes."""
from .runner_support import run_cli, termination
from .test_resume_and_metrics import free_port


def test_two_process_run_under_torchrun(make_config, tmp_path):
    config = make_config(training={"maxSteps": 10})
    result = run_cli(config, NPROC_PER_NODE="2", NNODES="1", MASTER_PORT=str(free_port()))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching 2 process(es) on each of 1 node(s) under torchrun" in result.stderr
    message = termination(config)
    assert message["status"] == "Succeeded" and message["globalStep"] == 10
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_worker_bad_input_still_exits_2(make_config):
    # The dataset is only opened inside the workers; torchrun alone would flatten their exit code to 1.
    config = make_config(dataset={"path": "/nonexistent/data.jsonl"})
    result = run_cli(config, NPROC_PER_NODE="2", NNODES="1", MASTER_PORT=str(free_port()))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "does not exist" in termination(config)["message"]
