"""The entry point re-launches itself under torchrun (two CPU processes, gloo), keeps exit classes,
waits for the rank-0 address on other nodes, and stops its processes on SIGTERM."""
import signal
import subprocess
import time

import pytest

import psutil

from .runner_support import is_one_sentence, run_cli, runner_command, runner_env, termination
from .test_resume_and_metrics import free_port

UNRESOLVABLE = "ftj-0.ftj-workers.llmops-test.invalid"  # .invalid never resolves (RFC 6761)


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


def _launch(config, log_path, **env) -> subprocess.Popen:
    with open(log_path, "w") as log:  # a file, not a pipe: nobody reads while it trains
        return subprocess.Popen(runner_command(config), env=runner_env(**env), stdout=log, stderr=subprocess.STDOUT)


def _stop(launcher: subprocess.Popen, known=()) -> None:
    """Kill, by pid, what this test started and is still running: the launcher and anything under it."""
    processes = list(known)
    if launcher.poll() is None:
        processes += psutil.Process(launcher.pid).children(recursive=True)
    launcher.kill()
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("node_rank", ["1", "0"])  # rank 0 too: its MASTER_ADDR is its own Service name
def test_a_node_fails_clearly_when_master_address_never_resolves(make_config, tmp_path, node_rank):
    config = make_config()
    launcher = _launch(config, tmp_path / "launcher.log", NNODES="2", NODE_RANK=node_rank, NPROC_PER_NODE="1",
                       MASTER_ADDR=UNRESOLVABLE, MASTER_PORT=str(free_port()), LLMOPS_MASTER_ADDR_WAIT_SECONDS="2")
    started = time.monotonic()
    try:
        code = launcher.wait(timeout=60)
    finally:
        _stop(launcher)
    log = (tmp_path / "launcher.log").read_text()
    assert code == 1, log[-3000:]
    message = termination(config)
    assert message["reason"] == "RendezvousUnresolved", message
    assert UNRESOLVABLE in message["message"] and is_one_sentence(message["message"]), message["message"]
    assert time.monotonic() - started >= 2  # it waited for the configured time first
    assert "under torchrun" not in log  # and never started torchrun


def test_two_nodes_start_once_the_master_address_resolves(make_config, tmp_path):
    # Two "pods" on this machine, one process each: node 1 resolves MASTER_ADDR, then both rendezvous
    # and train together. Each pod has its own termination log; the output path is shared, as required.
    env = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": str(free_port())}
    configs = [make_config(f"node-{rank}.json", training={"maxSteps": 5},
                           terminationMessagePath=str(tmp_path / f"termination-{rank}")) for rank in (0, 1)]
    nodes = [_launch(configs[rank], tmp_path / f"node-{rank}.log", NODE_RANK=str(rank), **env) for rank in (1, 0)]
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            _stop(node)
    assert codes == [0, 0], (tmp_path / "node-1.log").read_text()[-3000:]
    for config in configs:
        message = termination(config)
        assert message["status"] == "Succeeded" and message["globalStep"] == 5, message
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_sigterm_during_the_address_wait_stops_the_launcher(make_config, tmp_path):
    config = make_config()
    log_path = tmp_path / "launcher.log"
    launcher = _launch(config, log_path, NNODES="2", NODE_RANK="1", NPROC_PER_NODE="1",
                       MASTER_ADDR=UNRESOLVABLE, MASTER_PORT=str(free_port()), LLMOPS_MASTER_ADDR_WAIT_SECONDS="300")
    try:
        deadline = time.monotonic() + 30
        while "to resolve" not in log_path.read_text():
            assert launcher.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=10)
    finally:
        _stop(launcher)
    assert code == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
    assert termination(config)["reason"] == "Terminated"


def test_sigterm_reaches_torchrun_and_its_workers(make_config, tmp_path):
    # Kubernetes stops a pod with SIGTERM to its PID 1, the launcher; torchrun and the workers it starts
    # (each in its own session) must stop too, and the launcher must exit after them.
    config = make_config(training={"maxSteps": 100_000})
    log_path = tmp_path / "launcher.log"
    launcher = _launch(config, log_path, NNODES="1", NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    descendants = []
    try:
        deadline = time.monotonic() + 180
        # Wait until both workers have loaded the model, so the signal lands on real training processes.
        while log_path.read_text().count("trainable parameters") < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        descendants = psutil.Process(launcher.pid).children(recursive=True)
        assert len(descendants) >= 3, descendants  # torchrun and two workers

        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=60)
        _, alive = psutil.wait_procs(descendants, timeout=5)
        assert not alive, f"still running after the launcher got SIGTERM: {alive}"
    finally:
        _stop(launcher, descendants)  # they outlive a launcher that does not stop them
    assert code == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
    message = termination(config)
    assert message["reason"] == "Terminated" and is_one_sentence(message["message"]), message
