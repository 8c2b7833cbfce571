"""Times of the local cluster's real node, with the simulated (kwok) nodes as the baseline.

    .venv/bin/python bench/real_node.py [--pods 5]

Needs the binaries and images built (scripts/setup.sh, `llmops-devcluster images build`).
Prints, on a fresh cluster in a temporary folder:
  - `up` (warm: everything built), and `down`;
  - the first load of the images into the fresh node's containerd;
  - a pod from create to Running, median of --pods, on the real node and on a kwok node side by side;
  - the fine-tuning image rebuilt after a one-line change in runners/, and loaded again (incremental).
The one-line change is a comment appended to runners/llmops_runners/__init__.py, removed afterwards
(and the image rebuilt as it was).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llmops.devcluster import images
from llmops.devcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
TOUCHED = REPO / "runners" / "llmops_runners" / "__init__.py"


def timed(what: str, results: dict[str, float], fn, *args, **kwargs):
    started = time.monotonic()
    value = fn(*args, **kwargs)
    results[what] = time.monotonic() - started
    print(f"  {what}: {results[what]:.1f}s", flush=True)
    return value


def pod_to_running(cluster: LocalCluster, name: str, real: bool) -> float:
    spec = ('{"spec": {"nodeSelector": {"llmops.dev/real-node": "true"}}}' if real else
            '{"metadata": {"annotations": {"sim.llmops.dev/outcome": "run"}}, "spec": {"nodeSelector": {"type": "kwok"},'
            ' "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}')
    started = time.monotonic()
    cluster.kubectl("run", name, f"--image={images.BASE_IMAGE}", "--image-pull-policy=IfNotPresent", "--restart=Never",
                    "--overrides", spec, "--command", "--", "sleep", "600")
    while cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}", check=False).stdout != "Running":
        if time.monotonic() - started > 120:
            raise SystemExit(f"pod {name} not Running after 120s")
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llmops-bench-node-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        timed("up (warm)", results, cluster.up, log=lambda msg: None)
        try:
            if not cluster.has_real_node:
                print("no real node on this machine; nothing to measure", file=sys.stderr)
                return 1
            ctr = cluster.node.ctr()
            timed("first image load into the fresh node (operator, finetune)", results, images.load, ctr, ["operator", "finetune"], log=lambda m: None)
            real = [pod_to_running(cluster, f"real-{i}", True) for i in range(args.pods)]
            simulated = [pod_to_running(cluster, f"sim-{i}", False) for i in range(args.pods)]
            results["pod create -> Running, real node (median)"] = statistics.median(real)
            results["pod create -> Running, kwok node (median)"] = statistics.median(simulated)
            original = TOUCHED.read_text()
            try:
                TOUCHED.write_text(original + "# bench: a one-line change\n")
                timed("finetune image rebuild after a one-line change", results, images.build, ["finetune"], log=lambda m: None)
                timed("incremental load of the rebuilt image", results, images.load, ctr, ["finetune"], log=lambda m: None)
            finally:
                TOUCHED.write_text(original)
                images.build(["finetune"], log=lambda m: None)
        finally:
            timed("down", results, cluster.down, quiet=True)
    width = max(map(len, results))
    print("\nfigure".ljust(width + 1), "seconds")
    for what, seconds in results.items():
        print(what.ljust(width), f"{seconds:8.2f}")
    ratio = results["pod create -> Running, real node (median)"] / results["pod create -> Running, kwok node (median)"]
    print(f"\nreal node / kwok node, pod create -> Running: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
