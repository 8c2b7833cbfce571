"""The main job, end to end and for real: the README's CPU pipeline through the operator.

The same manifests as the quickstart (examples/local/tiny-inputs.yaml, then 06, 07, 05 and 08):
a Job makes the tiny model and its task on a claim, a FineTuneJob trains a LoRA adapter on the
real node, a CompressionJob merges it and quantizes the model to INT8 (ONNX Runtime) behind an
exact-match quality gate, and two InferenceServices serve the compressed model and the base with
the raw adapter. `llmops-devcluster pipeline` follows it and asks the held-out questions through
the Services with the openai client, as here.

A real Prometheus scrapes it all the while: the operator, and every workload pod through the
chart's PodMonitor (its relabeling included). At the end every dashboard is rendered from that
Prometheus (the pictures land in the test's folder; the README's come from such a run), and every
panel over our own series must have data.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

import pytest
from chart_helpers import render
from finetune_helpers import GROUP, VERSION, create, finetunejob
from real_workloads import describe, volume_path

from llmops.devcluster import pipeline
from llmops.observability import catalogue
from tests.helpers.dashboards import problems, render_all
from tests.helpers.prometheus import PodDiscovery, Prometheus, podmonitor_scrape_configs

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = ["06-finetunejob-cpu.yaml", "07-compressionjob-cpu.yaml", "05-inferenceservice-cpu.yaml", "08-inferenceservice-cpu-adapter.yaml"]

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def images(node_images):
    return node_images("finetune", "compress-onnx", "serve")


@pytest.fixture
def prometheus(core, namespace, operator, tmp_path):
    podmonitor = next(d for d in render("metrics.podMonitor.enabled=true") if d["kind"] == "PodMonitor")
    discovery = PodDiscovery(core, namespace)
    scrape = [{"job_name": "llmops-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
              *podmonitor_scrape_configs(podmonitor, discovery)]
    with discovery, Prometheus(tmp_path / "prometheus", scrape, rule_files=[REPO / "dashboards" / "alerts.yaml"]) as prom:
        yield prom


def test_finetune_compress_serve_really_runs_and_the_answers_show_the_finetuning(images, cluster, custom, core, namespace, operator,
                                                                                 prometheus, tmp_path):
    started = time.time()
    # One simulated job (kwok) that fails, so the failure panels and series have something to show.
    doomed = {"outcome": "fail", "exit-code": "2", "duration": "1s",
              "message": json.dumps({"status": "Failed", "reason": "InvalidInput", "message": "Dataset record 7 is not JSON."})}
    create(custom, namespace, finetunejob("doomed", sim=doomed))
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "local" / "tiny-inputs.yaml"))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=complete", "job/make-tiny-inputs", "--timeout=600s")
    for manifest in MANIFESTS:
        cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / manifest))

    def get(plural, name):
        try:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except Exception:  # noqa: BLE001 - not created yet
            return None

    outcome = pipeline.watch(get, timeout=900, interval=2)
    diagnose = "\n".join(describe(core, namespace, name, []) for name in (pipeline.FINETUNE, pipeline.COMPRESS, pipeline.SERVE))
    assert outcome.ok, outcome.why + "\n" + diagnose
    tuned, compressed = (outcome.objects[n]["status"] for n in (pipeline.FINETUNE, pipeline.COMPRESS))
    served, base = (outcome.objects[n]["status"] for n in (pipeline.SERVE, pipeline.SERVE_BASE))
    assert (tuned["phase"], compressed["phase"], served["phase"], base["phase"]) == ("Succeeded", "Succeeded", "Ready", "Ready")

    # Each artifact is where its status says.
    outputs = volume_path(core, namespace, "tiny-outputs")
    adapter = outputs / tuned["result"]["artifactUri"].removeprefix("pvc://tiny-outputs/")
    model = outputs / compressed["artifactUri"].removeprefix("pvc://tiny-outputs/")
    assert (adapter / "adapter_config.json").is_file() and (model / "model.onnx").is_file()
    assert served["modelUri"] == compressed["artifactUri"] and served["modelFormat"] == "onnx"
    assert base["adapters"] == [{"name": pipeline.FINETUNE, "source": f"finetunejob/{pipeline.FINETUNE}",
                                 "uri": tuned["result"]["artifactUri"], "state": "Loaded", "message": "on 1 replica(s)"}]

    # The compression figures in status are the ones the runner measured and wrote beside the model.
    measured = json.loads((model / "compression.json").read_text())
    for key in ("sizeRatio", "qualityBefore", "qualityAfter", "qualityDrop"):
        assert compressed["metrics"][key] == pytest.approx(measured["metrics"][key]), key
    assert compressed["qualityGate"]["passed"] is True and compressed["qualityGate"]["metric"] == "exact-match"

    # The served models answer, through their Services, and the answers show the fine-tuning.
    records = pipeline.held_out_questions(cluster, namespace)
    questions = [r["instruction"] for r in records]
    def accuracy(service, model_name):
        answers = pipeline.ask(cluster, namespace, service, model_name, questions)
        assert all(isinstance(a, str) for a in answers) and len(answers) == len(records)
        return sum(a == r["output"] for a, r in zip(answers, records)) / len(records)

    base_accuracy = accuracy(pipeline.SERVE_BASE, pipeline.BASE_NAME)
    adapter_accuracy = accuracy(pipeline.SERVE_BASE, pipeline.FINETUNE)
    compressed_accuracy = accuracy(pipeline.SERVE, pipeline.SERVE)
    print(f"held-out accuracy: base {base_accuracy:.2f}, adapter {adapter_accuracy:.2f}, merged INT8 {compressed_accuracy:.2f}")
    assert adapter_accuracy >= base_accuracy + 0.4 and compressed_accuracy >= base_accuracy + 0.4
    # What the gate measured in the runner is what the Service answers (same greedy decoding, same questions).
    assert compressed_accuracy == pytest.approx(compressed["qualityGate"]["after"], abs=0.13)

    served = load(core, namespace, seconds=20, clients=8)
    assert served > 8, served

    # What Prometheus saw of all this, through every dashboard: pod series carry the resource label
    # the PodMonitor's relabeling sets, and every panel over our own series has data. A job's pod
    # can finish before Prometheus first scrapes it (discovery hands new targets to the scrapers
    # every 5 s): its runner's series are then required only if Prometheus did scrape it. The
    # operator's series keep the job's results either way.
    time.sleep(3)  # the last answers' series scraped
    unscraped = set()
    for label, name, prefix in (("finetunejob", pipeline.FINETUNE, "llmops_finetune_"), ("compressionjob", pipeline.COMPRESS, "llmops_compress_")):
        if prometheus.query(f'max_over_time(up{{{label}="{name}"}}[1h]) == 1'):
            assert prometheus.query(f'last_over_time({{__name__=~"{prefix}.+", {label}="{name}"}}[1h])'), f"no {prefix}* series labelled {label}={name}"
        else:
            unscraped.add(prefix)
            print(f"the {label} pod ended before Prometheus scraped it: its {prefix}* panels may be empty")
    assert prometheus.query(f'last_over_time(vllm:generation_tokens_total{{inferenceservice="{pipeline.SERVE}"}}[1h])')
    # LLMOPS_DASHBOARDS_OUT=docs/dashboards: how the README's pictures are made.
    pictures = Path(os.environ.get("LLMOPS_DASHBOARDS_OUT") or tmp_path / "dashboards")
    results = render_all(prometheus.url, started, time.time(), {"namespace": namespace}, pictures)
    ours = catalogue.our_names() - catalogue.GPU_ONLY

    def must_have_data(reads: set[str]) -> bool:
        return bool(reads) and reads <= ours | {"up"} and not any(r.startswith(tuple(unscraped)) for r in reads)

    assert not problems(results, must_have_data), problems(results, must_have_data)
    print("dashboards rendered to", pictures)


def load(core, namespace: str, seconds: float, clients: int) -> int:
    """A short load on both servers, straight to their pods: completions from `clients` threads
    for `seconds`, half to the compressed model, half to the adapter. Returns the requests served."""
    targets = []
    for service, model in ((pipeline.SERVE, pipeline.SERVE), (pipeline.SERVE_BASE, pipeline.FINETUNE)):
        pods = core.list_namespaced_pod(namespace, label_selector=f"llmops.dev/name={service}").items
        ip = next(p.status.pod_ip for p in pods if p.status.phase == "Running" and p.status.pod_ip)
        targets.append((f"http://{ip}:8000/v1/completions", model))
    deadline = time.monotonic() + seconds

    def client(index: int) -> int:
        url, model = targets[index % len(targets)]
        served = 0
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                http.post(url, json={"model": model, "prompt": "What is the capital of", "max_tokens": 16}).raise_for_status()
                served += 1
        return served

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)))
