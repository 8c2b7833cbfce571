"""llmops-devcluster: a local Kubernetes control plane with simulated GPU nodes and one real CPU node.

    llmops-devcluster build          compile the pinned binaries once (cached)
    llmops-devcluster up [--crds DIR] [--operator] [--no-real-node]
                                     start etcd, apiserver, controller-manager, scheduler, kwok + GPU nodes,
                                     and the real node `local-cpu` (containerd, kubelet, kube-proxy, bridge CNI,
                                     default StorageClass `local-path`) where the machine allows it
    llmops-devcluster status         show components and nodes
    llmops-devcluster env            print `export KUBECONFIG=...`
    llmops-devcluster kubectl ARGS   run the matching kubectl against the cluster
    llmops-devcluster helm ARGS      run the pinned helm against the cluster
    llmops-devcluster pipeline       follow the CPU examples' fine-tune -> compress -> serve chain, then ask it
    llmops-devcluster down           stop everything and drop the etcd data
    llmops-devcluster images build|load [NAMES...]
                                     build the node's images with buildah / load them into its containerd
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

from .build import bin_dir, ensure_binaries, ensure_node_binaries
from .cluster import LocalCluster, default_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmops-devcluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=default_root(), help="cluster folder (default $LLMOPS_CLUSTER_DIR or ~/.local/state/llmops/cluster)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the binaries")
    up = sub.add_parser("up", help="start the cluster")
    up.add_argument("--nodes", type=int, default=None, help="number of 8-GPU H100 nodes instead of the default mixed pool")
    up.add_argument("--crds", type=Path, default=None, help="folder of CRDs to install once the cluster is up")
    up.add_argument("--operator", action="store_true", help="also run llmops-operator against the cluster (log in <dir>/logs)")
    up.add_argument("--no-real-node", action="store_true", help="simulated nodes only (also: LLMOPS_REAL_NODE=0)")
    sub.add_parser("down", help="stop the cluster")
    sub.add_parser("status", help="show the cluster")
    sub.add_parser("env", help="print the KUBECONFIG export")
    kubectl = sub.add_parser("kubectl", help="run kubectl against the cluster")
    kubectl.add_argument("args", nargs=argparse.REMAINDER)
    helm = sub.add_parser("helm", help="run helm against the cluster")
    helm.add_argument("args", nargs=argparse.REMAINDER)
    pipeline = sub.add_parser("pipeline", help="follow the CPU examples' chain until it serves, then ask it the held-out questions")
    pipeline.add_argument("--namespace", default="default")
    pipeline.add_argument("--timeout", type=float, default=900, help="seconds to wait for the chain")
    images = sub.add_parser("images", help="build the real node's images (buildah, no registry) or load them into its containerd")
    images.add_argument("action", choices=("build", "load"))
    images.add_argument("names", nargs="*", help="base, pause, operator, finetune or full image names (default: pause operator finetune)")
    images.add_argument("--context", type=Path, default=None, help="repository root to build from (default: the one holding this package, else the current folder's)")
    args = parser.parse_args(argv)

    cluster = LocalCluster(args.dir, real_node=False if getattr(args, "no_real_node", False) else None)
    if args.command == "build":
        print(ensure_binaries())
        if platform.system() == "Linux":  # the real node's programs (kubelet, containerd) are Linux-only
            print(ensure_node_binaries())
    elif args.command == "up":
        cluster.up(node_count=args.nodes)
        if args.crds:
            install_crds(cluster, args.crds)
        if args.operator:
            cluster.start_operator()
            print(f"llmops-operator running; log: {cluster.logs / 'llmops-operator.log'}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "down":
        cluster.down()
    elif args.command == "status":
        if not cluster.running():
            print("not running")
            return 1
        print(f"server {cluster.server}, binaries {bin_dir()}")
        state = cluster.state()
        if state and state.node_network is not None:
            print(f"real node local-cpu: network namespace llmops-{state.node_network}, containerd {cluster.node.ctr()[2]}")
        else:
            print("no real node: simulated nodes only")
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product", check=False).stdout)
    elif args.command == "env":
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "images":
        return images_command(cluster, args.action, args.names or None, args.context)
    elif args.command == "kubectl":
        proc = cluster.kubectl(*args.args, check=False)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    elif args.command == "helm":
        ensure_binaries()
        return subprocess.run([str(bin_dir() / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args.args], check=False).returncode
    elif args.command == "pipeline":
        from .pipeline import run

        return run(cluster, args.namespace, args.timeout)
    return 0


def images_command(cluster: LocalCluster, action: str, names: list[str] | None, context: Path | None = None) -> int:
    """`images build`: buildah builds (cached); `images load`: into the running cluster's real node."""
    from . import images

    try:
        if action == "build":
            for name in images.build(names, context=context):
                print(name)
        else:
            if not cluster.running():
                print("the cluster is not running (llmops-devcluster up)", file=sys.stderr)
                return 1
            if not cluster.has_real_node:
                print("the cluster has no real node to load images into (simulated nodes pull nothing)", file=sys.stderr)
                return 1
            images.load(cluster.node.ctr(), names)
    except images.ImageError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def install_crds(cluster: LocalCluster, folder: Path) -> None:
    """Apply the CRDs and wait until the API server serves them."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(folder))


if __name__ == "__main__":
    sys.exit(main())
