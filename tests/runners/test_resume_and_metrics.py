"""Acceptance 4 and 6: a killed run resumes from its checkpoint; the metrics endpoint serves while training."""
import json
import re
import signal
import socket
import subprocess
import time
import urllib.request

from .runner_support import runner_command, runner_env, termination

SERIES = ["step", "total_steps", "epoch", "loss", "eval_loss", "learning_rate", "tokens_per_second",
          "samples_per_second", "process_rss_bytes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"runner exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gauge(text: str, name: str) -> float | None:
    match = re.search(rf"^llmops_finetune_{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_killed_run_resumes_from_checkpoint_and_serves_metrics(make_config, tmp_path):
    port = free_port()
    # Long enough that the first run is still training when the first checkpoint lands.
    config = make_config(training={"maxSteps": 500, "evalSteps": 200, "loggingSteps": 5},
                         checkpointing={"everySteps": 20, "keepLast": 2}, metrics={"port": port})
    checkpoints = tmp_path / "out" / "checkpoints"
    first = subprocess.Popen(runner_command(config), env=runner_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        # Metrics while training: every series present, and progress past the first logged loss.
        def scraped_with_progress():
            text = scrape(port)
            return text if text and (gauge(text, "loss") or 0) > 0 and (gauge(text, "eval_loss") or 0) > 0 else None

        text = wait_for(scraped_with_progress, 120, first, "a scrape with loss and eval loss")
        for name in SERIES:
            assert gauge(text, name) is not None, f"series {name} missing"
        assert gauge(text, "total_steps") == 500
        assert 0 < gauge(text, "step") <= 500
        assert gauge(text, "process_rss_bytes") > 10_000_000
        assert gauge(text, "tokens_per_second") > 0

        wait_for(lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")), 120, first, "a checkpoint")
        first.send_signal(signal.SIGKILL)  # what a node loss or OOM kill looks like to the pod
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                   if (p / "trainer_state.json").is_file())
    assert saved and max(saved) < 500, f"the run should have been cut short, checkpoints: {saved}"
    resume_step = max(saved)

    second = subprocess.run(runner_command(config), env=runner_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    message = termination(config)
    assert message["status"] == "Succeeded"
    assert message["resumedFromStep"] == resume_step
    # The optimizer's own step counter came back from optimizer.pt, not from zero.
    assert message["resumedOptimizerStep"] == resume_step
    assert message["globalStep"] == 500
    assert f"resuming from {checkpoints / f'checkpoint-{resume_step}'}" in second.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["resumedFromStep"] == resume_step


def test_sigterm_stops_in_process_training_and_says_so(make_config):
    """One process training by itself is the pod's PID 1: SIGTERM must stop it and leave a report,
    not be ignored until the grace period's SIGKILL."""
    port = free_port()
    config = make_config(training={"maxSteps": 5000, "loggingSteps": 5}, metrics={"port": port})
    proc = subprocess.Popen(runner_command(config), env=runner_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (text := scrape(port)) and (gauge(text, "step") or 0) > 0, 120, proc, "training under way")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stopped_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and stopped_after < 20
    report = termination(config)
    assert report["status"] == "Failed" and report["reason"] == "Terminated"
