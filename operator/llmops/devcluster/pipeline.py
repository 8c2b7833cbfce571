"""The main job, followed and then used: fine-tune → compress → serve on the local cluster.

`llmops-devcluster pipeline` watches the chain the CPU examples make (06 FineTuneJob, 07
CompressionJob, 05 and 08 InferenceServices), one table refreshed in place with the training's
progress bar, until every service is Ready or something fails. Then it asks the held-out
questions of the tiny task through the Services with the `openai` client, and prints the base
model's answers beside the fine-tuned ones (the adapter on the base, and the merged INT8 model),
the final table, the compression figures, and where to look next.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cluster import LocalCluster

FINETUNE, COMPRESS, SERVE, SERVE_BASE = "tiny-cpu-lora", "tiny-cpu-int8", "tiny-cpu", "tiny-cpu-base"
BASE_NAME = "tiny-base"  # what 08 serves the base model as
INPUTS_CLAIM, HELD_OUT = "tiny-inputs", "held_out.jsonl"
CHAIN = (("FineTuneJob", "finetunejobs", FINETUNE), ("CompressionJob", "compressionjobs", COMPRESS),
         ("InferenceService", "inferenceservices", SERVE), ("InferenceService", "inferenceservices", SERVE_BASE))
BAR = 24


@dataclass
class Outcome:
    ok: bool
    objects: dict[str, dict[str, Any]]  # name -> the object as last read
    why: str = ""


def read_chain(get: Callable[[str, str], dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    return {name: get(plural, name) or {} for _, plural, name in CHAIN}


def progress_bar(done: int, total: int) -> str:
    filled = int(BAR * done / total) if total else 0
    return "[" + "#" * filled + "." * (BAR - filled) + f"] {done}/{total}"


def describe(kind: str, obj: dict[str, Any]) -> str:
    """One line of what an object is doing, for a person watching."""
    status = obj.get("status") or {}
    if not obj:
        return "not created"
    if kind == "FineTuneJob" and status.get("phase") == "Running" and (p := status.get("progress")):
        line = progress_bar(int(p.get("step") or 0), int(p.get("totalSteps") or 0)) + " steps"
        if p.get("loss") is not None:
            line += f"  loss {p['loss']:.3f}"
        return line + (f"  eta {p['eta']}" if p.get("eta") else "")
    if kind == "CompressionJob" and status.get("phase") == "Running" and status.get("progress"):
        running = next((s["name"] for s in status.get("stages") or [] if s.get("phase") == "Running"), "")
        return f"stages {status['progress']}" + (f" ({running})" if running else "")
    if kind == "InferenceService" and status.get("phase") in ("Ready", "Loading", "Degraded"):
        adapters = ", ".join(f"{a['name']} {a['state']}" for a in status.get("adapters") or [])
        line = f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)} ready, model {status.get('servedModelName')}"
        return line + (f"; adapter {adapters}" if adapters else "")
    return (status.get("message") or "")[:100]


def table(objects: dict[str, dict[str, Any]]) -> list[str]:
    rows = [("KIND", "NAME", "PHASE", "")]
    rows += [(kind, name, (objects[name].get("status") or {}).get("phase") or "-", describe(kind, objects[name]))
             for kind, _, name in CHAIN]
    return [f"{k:<17} {n:<14} {p:<10} {d}" for k, n, p, d in rows]


def finished(objects: dict[str, dict[str, Any]]) -> Outcome | None:
    """Done when every service serves (and the adapter is loaded), or as soon as anything failed."""
    for kind, _, name in CHAIN:
        status = objects[name].get("status") or {}
        if status.get("phase") == "Failed":
            return Outcome(False, objects, f"{kind} {name} failed: {status.get('message')}")
    services = [objects[SERVE], objects[SERVE_BASE]]
    adapters = (objects[SERVE_BASE].get("status") or {}).get("adapters") or []
    if all((s.get("status") or {}).get("phase") == "Ready" for s in services) and all(a["state"] == "Loaded" for a in adapters):
        return Outcome(True, objects)
    return None


def watch(get: Callable[[str, str], dict[str, Any] | None], timeout: float, out=sys.stdout, interval: float = 1.0) -> Outcome:
    """Redraw the chain's table in place (a terminal) or print it when it changes (a log)."""
    in_place = out.isatty()
    drawn, last = 0, None
    deadline = time.monotonic() + timeout
    while True:
        objects = read_chain(get)
        lines = table(objects)
        if lines != last:
            if in_place and drawn:
                out.write(f"\x1b[{drawn}F\x1b[J")  # back to the table's first line, clear below
            out.write("\n".join(lines) + "\n")
            out.flush()
            drawn, last = len(lines), lines
        outcome = finished(objects)
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            return Outcome(False, objects, f"not done after {timeout:.0f}s")
        time.sleep(interval)


def held_out_questions(cluster: LocalCluster, namespace: str) -> list[dict[str, str]]:
    """The tiny task's held-out records, read off the inputs claim (the node's volumes are local folders)."""
    claim = json.loads(cluster.kubectl("get", "pvc", "-n", namespace, INPUTS_CLAIM, "-o", "json").stdout)
    volume = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    folder = (volume["spec"].get("hostPath") or volume["spec"].get("local"))["path"]
    return [json.loads(line) for line in (Path(folder) / HELD_OUT).read_text().splitlines() if line.strip()]


def ask(cluster: LocalCluster, namespace: str, service: str, model: str, questions: list[str]) -> list[str]:
    """The `openai` client inside the node's network, through the Service's ClusterIP."""
    ip = cluster.kubectl("get", "svc", "-n", namespace, f"{service}-lis", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    done = cluster.node.exec_in_netns([sys.executable, "-m", "llmops.devcluster.chat", f"http://{ip}/v1", model, *questions],
                                      capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"asking {service} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)


def printable(text: str) -> str:
    """An untrained model's answer is any byte-level tokens: keep the table readable."""
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)


def answers_table(records: list[dict[str, str]], columns: dict[str, list[str]], shown: int = 6) -> list[str]:
    """The first questions with each model's answer, and every model's accuracy over all of them."""
    names = list(columns)
    lines = [f"{'question':<42} {'expected':<9} " + " ".join(f"{n:<16}" for n in names)]
    for i, record in enumerate(records[:shown]):
        lines.append(f"{record['instruction'][:41]:<42} {record['output']:<9} " + " ".join(f"{printable(columns[n][i])[:15]:<16}" for n in names))
    accuracy = {n: sum(a == r["output"] for a, r in zip(columns[n], records)) / len(records) for n in names}
    lines.append(f"{'held-out accuracy (' + str(len(records)) + ' questions)':<52} " + " ".join(f"{accuracy[n]:<16.2f}" for n in names))
    return lines


def compression_figures(compression: dict[str, Any]) -> list[str]:
    status = compression.get("status") or {}
    metrics, gate = status.get("metrics") or {}, status.get("qualityGate") or {}
    lines = []
    if "sizeBytesBefore" in metrics:
        lines.append(f"size: {metrics['sizeBytesBefore'] / 1e3:.0f} kB -> {metrics['sizeBytesAfter'] / 1e3:.0f} kB "
                     f"(ratio {metrics.get('sizeRatio', 0):.2f})")
    if gate:
        lines.append(f"quality ({gate.get('metric')}): {gate.get('before'):.3f} before, {gate.get('after'):.3f} after, "
                     f"drop {gate.get('drop', 0):.1%} (gate: at most {gate.get('maxDrop', 0):.0%}) -> "
                     + ("passed" if gate.get("passed") else "FAILED"))
    if "latencyRatio" in metrics:
        lines.append(f"CPU forward latency ratio: {metrics['latencyRatio']:.2f}; greedy agreement {metrics.get('greedyAgreement', 0):.2f}")
    return lines


def run(cluster: LocalCluster, namespace: str = "default", timeout: float = 900, out=sys.stdout) -> int:
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))

    def get(plural: str, name: str) -> dict[str, Any] | None:
        try:
            return api.get_namespaced_custom_object("llmops.dev", "v1alpha1", namespace, plural, name)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    print("fine-tune -> compress -> serve, on the local cluster:", file=out)
    outcome = watch(get, timeout, out)
    if not outcome.ok:
        print(f"\nthe chain did not finish: {outcome.why}", file=out)
        print(f"  kubectl describe ftj {FINETUNE}; kubectl describe cpj {COMPRESS}; kubectl describe lis {SERVE}", file=out)
        return 1
    records = held_out_questions(cluster, namespace)
    questions = [r["instruction"] for r in records]
    columns = {
        "base": ask(cluster, namespace, SERVE_BASE, BASE_NAME, questions),
        "LoRA adapter": ask(cluster, namespace, SERVE_BASE, FINETUNE, questions),
        "merged INT8": ask(cluster, namespace, SERVE, SERVE, questions),
    }
    chat = ask(cluster, namespace, SERVE, SERVE, [questions[0]])[0]
    width = min(shutil.get_terminal_size().columns, 120)
    print("\n" + "-" * width, file=out)
    print(f"chat through the Service {SERVE}-lis (openai client): {questions[0]!r} -> {printable(chat)!r}\n", file=out)
    print("\n".join(answers_table(records, columns)), file=out)
    print("\ncompression (" + COMPRESS + "): " + "; ".join(compression_figures(outcome.objects[COMPRESS])), file=out)
    print("\n" + cluster.kubectl("get", "llmops", "-n", namespace).stdout, file=out)
    print("where to look next:", file=out)
    for line in (f"kubectl describe lis {SERVE}            # replicas, URL, conditions, events",
                 f"kubectl describe cpj {COMPRESS}       # every stage's figures and the quality gate",
                 f"kubectl logs -l llmops.dev/name={SERVE}   # the server's log",
                 f"kubectl get --raw /api/v1/namespaces/{namespace}/services/{SERVE}-lis:http/proxy/metrics | grep ^vllm:"
                 "   # the server's vLLM-named metrics",
                 "dashboards/ (Grafana JSON) and docs/operator.md"):
        print(f"  {line}", file=out)
    return 0
