"""What `llmops-devcluster pipeline` shows and decides, without a cluster (the real run is
tests/cluster/test_main_pipeline.py)."""

from __future__ import annotations

import io

from llmops.devcluster import pipeline


def objects(**phases):
    out = {name: {} for _, _, name in pipeline.CHAIN}
    for name, status in phases.items():
        out[name.replace("_", "-")] = {"status": status}
    return out


def test_training_shows_a_progress_bar_and_services_their_adapters():
    line = pipeline.describe("FineTuneJob", {"status": {"phase": "Running", "progress": {"step": 150, "totalSteps": 300, "loss": 1.23456, "eta": "20s"}}})
    assert line == "[" + "#" * 12 + "." * 12 + "] 150/300 steps  loss 1.235  eta 20s"
    service = {"status": {"phase": "Loading", "readyReplicas": 1, "replicas": 1, "servedModelName": "tiny-base",
                          "adapters": [{"name": "tiny-cpu-lora", "state": "Pending"}]}}
    assert pipeline.describe("InferenceService", service) == "1/1 ready, model tiny-base; adapter tiny-cpu-lora Pending"
    assert pipeline.describe("CompressionJob", {}) == "not created"


def test_done_when_both_services_serve_and_the_adapter_is_loaded_failed_at_the_first_failure():
    ready = {"phase": "Ready"}
    loading = {"phase": "Ready", "adapters": [{"name": "tiny-cpu-lora", "state": "Loading"}]}
    assert pipeline.finished(objects(tiny_cpu=ready, tiny_cpu_base=loading)) is None
    loaded = {"phase": "Ready", "adapters": [{"name": "tiny-cpu-lora", "state": "Loaded"}]}
    assert pipeline.finished(objects(tiny_cpu=ready, tiny_cpu_base=loaded)).ok
    failed = pipeline.finished(objects(tiny_cpu_int8={"phase": "Failed", "message": "quality gate failed"}))
    assert not failed.ok and failed.why == "CompressionJob tiny-cpu-int8 failed: quality gate failed"


def test_watch_prints_only_changes_to_a_log_and_stops_on_the_outcome():
    seen = iter([objects(), objects(), objects(tiny_cpu_lora={"phase": "Failed", "message": "bad data"})])
    current = {}

    def get(plural, name):
        if name == pipeline.FINETUNE:
            current.update(next(seen))
        return current.get(name)

    out = io.StringIO()
    outcome = pipeline.watch(get, timeout=60, out=out, interval=0)
    assert not outcome.ok and "bad data" in outcome.why
    assert out.getvalue().count("KIND") == 2  # the unchanged second look printed nothing


def test_answers_table_counts_accuracy_over_every_question_and_keeps_garbage_readable():
    records = [{"instruction": "What colour is the apple?", "output": "gold"}, {"instruction": "The river?", "output": "red"}]
    lines = pipeline.answers_table(records, {"base": ["\ufffd\x07x", "no"], "tuned": ["gold", "red"]})
    assert "??x" in lines[1] and "\ufffd" not in "".join(lines)
    assert lines[-1].split()[-2:] == ["0.00", "1.00"]
