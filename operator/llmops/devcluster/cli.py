"""llmops-devcluster: a local Kubernetes control plane with simulated GPU nodes.

    llmops-devcluster build          compile the pinned binaries once (cached)
    llmops-devcluster up [--crds DIR] [--operator]
                                     start etcd, apiserver, controller-manager, scheduler, kwok + GPU nodes
    llmops-devcluster status         show components and nodes
    llmops-devcluster env            print `export KUBECONFIG=...`
    llmops-devcluster kubectl ARGS   run the matching kubectl against the cluster
    llmops-devcluster down           stop everything and drop the etcd data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import bin_dir, ensure_binaries
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
    sub.add_parser("down", help="stop the cluster")
    sub.add_parser("status", help="show the cluster")
    sub.add_parser("env", help="print the KUBECONFIG export")
    kubectl = sub.add_parser("kubectl", help="run kubectl against the cluster")
    kubectl.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    cluster = LocalCluster(args.dir)
    if args.command == "build":
        print(ensure_binaries())
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
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product", check=False).stdout)
    elif args.command == "env":
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "kubectl":
        proc = cluster.kubectl(*args.args, check=False)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    return 0


def install_crds(cluster: LocalCluster, folder: Path) -> None:
    """Apply the CRDs and wait until the API server serves them."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(folder))


if __name__ == "__main__":
    sys.exit(main())
