"""A real Kubernetes control plane, simulated GPU nodes and one real CPU node.

etcd, kube-apiserver (RBAC on), kube-controller-manager and kube-scheduler are
the real programs; kwok stands in for the kubelets of GPU nodes; a real kubelet
with containerd runs the pods that land on the CPU node (node.py), where the
machine allows it. Everything of one cluster lives in one folder: PKI, etcd
data, logs, kubeconfig, the node's files and a state file with ports, process
ids and what the node changed on the host, so `down` works from another process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import node as realnode
from . import nodes as node_defs
from .build import ensure_binaries
from .pki import make_pki

KWOK_CONFIG = Path(__file__).with_name("kwok.yaml")
SERVICE_CIDR = "10.96.0.0/16"
# Simulated pods get loopback addresses: a test can serve a pod's port (a runner's
# /metrics, a model server) on that address and the operator reaches it as in a cluster.
POD_CIDR = "127.1.0.0/16"


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_kubeconfig(path: Path, server: str, ca: Path, token: str, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "llmops-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "llmops-local", "context": {"cluster": "llmops-local", "user": user}}],
        "current-context": "llmops-local",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def real_node_wanted() -> bool:
    """The real node is on unless LLMOPS_REAL_NODE=0 (or `up --no-real-node`)."""
    return os.environ.get("LLMOPS_REAL_NODE", "1").lower() not in ("0", "false", "no", "off")


@dataclass
class ClusterState:
    apiserver_port: int
    etcd_port: int
    etcd_peer_port: int
    kwok_port: int
    pids: dict[str, int] = field(default_factory=dict)
    apiserver_host: str = "127.0.0.1"
    node_network: int | None = None  # the real node's NodeNetwork index, None without a real node
    node_sysctls: dict[str, str] | None = None  # host sysctls as they were before the kubelet started


class LocalCluster:
    """One local cluster rooted at `root`."""

    def __init__(self, root: Path, audit_policy: Path | None = None, real_node: bool | None = None):
        self.root = Path(root)
        # None: as LLMOPS_REAL_NODE says (default on). The machine may still refuse (node.unsupported_reason).
        self.want_real_node = real_node_wanted() if real_node is None else real_node
        self.node = realnode.RealNode(self)
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        self.kubeconfig = self.root / "kubeconfig"
        # Opt-in (benchmarks): the API server logs what this audit policy selects to `audit_log`, one JSON line per event.
        self.audit_policy = Path(audit_policy) if audit_policy else None
        self.audit_log = self.logs / "audit.log"

    # -- state -------------------------------------------------------------
    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        return ClusterState(**json.loads(self.state_file.read_text()))

    def _save(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    @property
    def server(self) -> str:
        state = self.state()
        if state is None:
            raise ClusterError(f"no cluster in {self.root}")
        return f"https://{state.apiserver_host}:{state.apiserver_port}"

    @property
    def has_real_node(self) -> bool:
        state = self.state()
        return bool(state and state.node_network is not None)

    def running(self) -> bool:
        state = self.state()
        return bool(state and state.pids) and all(_alive(pid) for pid in state.pids.values())

    # -- lifecycle ---------------------------------------------------------
    def up(self, node_count: int | None = None, timeout: float = 90, log=print) -> None:
        """Start every component, register the GPU nodes and the real node; returns when all nodes are Ready."""
        if self.running():
            log(f"cluster already running: KUBECONFIG={self.kubeconfig}")
            return
        self.down(quiet=True)
        started = time.monotonic()
        binaries = ensure_binaries(log)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state = ClusterState(free_port(), free_port(), free_port(), free_port())
        net = self._claim_node_network(state, log)
        self._save(state)  # from here on `down` finds what to undo
        tokens = make_pki(self.pki, extra_ips=[net.host_ip] if net else [], node_name=realnode.NODE_NAME)
        configs = {}
        for name, token in tokens.items():
            path = self.root / ("kubeconfig" if name == "admin" else f"{name}.kubeconfig")
            write_kubeconfig(path, self.server, self.pki / "ca.crt", token, name)
            configs[name] = path
        try:
            self._spawn(state, "etcd", [str(binaries / "etcd"), *self._etcd_args(state)])
            self._spawn(state, "kube-apiserver", [str(binaries / "kube-apiserver"), *self._apiserver_args(state)])
            self._wait_healthy(tokens["admin"], deadline=started + timeout)
            self._spawn(state, "kube-controller-manager", [str(binaries / "kube-controller-manager"), *self._controller_manager_args(configs)])
            self._spawn(state, "kube-scheduler", [str(binaries / "kube-scheduler"), f"--kubeconfig={configs['scheduler']}",
                                                  "--leader-elect=false", "--secure-port=0", "--v=1"])
            self._spawn(state, "kwok", [str(binaries / "kwok"), f"--kubeconfig={configs['kwok']}", f"--config={KWOK_CONFIG}",
                                        f"--manage-nodes-with-annotation-selector={node_defs.KWOK_NODE_ANNOTATION}=fake",
                                        f"--server-address=127.0.0.1:{state.kwok_port}", f"--cidr={POD_CIDR}"])
            self.apply(node_defs.default_nodes(node_count))
            if net:
                self.node.start(state, net, tokens, spawn=lambda name, argv, env=None: self._spawn(state, name, argv, env=env), log=log)
                self._save(state)
            self._wait_nodes_ready(deadline=started + timeout + (60 if net else 0))
        except Exception:
            self.down(quiet=True, keep_logs=True)
            raise
        log(f"cluster up in {time.monotonic() - started:.1f}s: export KUBECONFIG={self.kubeconfig}")

    def down(self, quiet: bool = False, keep_logs: bool = False) -> None:
        state = self.state()
        if state:
            # Stop in reverse start order: clients first, etcd last.
            for name, pid in reversed(list(state.pids.items())):
                _terminate(pid)
            # Then what outlives the processes: containers, mounts, the node's network, cgroups, sysctls.
            self.node.stop(state)
            if not quiet:
                print(f"stopped {', '.join(state.pids)}" + (" and removed the real node's network, mounts and cgroups" if state.node_network is not None else ""))
        if self.state_file.exists():
            self.state_file.unlink()
        if not keep_logs:
            for folder in (self.root / "etcd-data", self.node.root):
                if folder.exists():
                    subprocess.run(["rm", "-rf", str(folder)], check=False)

    # -- helpers -----------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        binaries = ensure_binaries()
        return subprocess.run(
            [str(binaries / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check,
        )

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def start_operator(self) -> None:
        """Run llmops-operator against this cluster as one more component (stopped by `down`)."""
        state = self.state()
        if state is None:
            raise ClusterError(f"no cluster in {self.root}")
        if "llmops-operator" in state.pids and _alive(state.pids["llmops-operator"]):
            return
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LLMOPS_METRICS_PORT": str(free_port()),
            "LLMOPS_PROGRESS_INTERVAL": "5",
            # The simulated cluster needs no hub: no model-config lookups unless asked for.
            "LLMOPS_HF_ENDPOINT": os.environ.get("LLMOPS_HF_ENDPOINT", ""),
        }
        self._spawn(state, "llmops-operator", [sys.executable, "-m", "llmops.main", "--standalone",
                                               "--liveness", f"http://127.0.0.1:{free_port()}/healthz"], env=env)

    def _claim_node_network(self, state: ClusterState, log) -> "realnode.NodeNetwork | None":
        """The real node's network, claimed before the API server starts (it binds to the host end)."""
        if not self.want_real_node:
            return None
        reason = realnode.unsupported_reason()
        if reason:
            log(f"simulated nodes only: {reason}")
            return None
        net = realnode.allocate_network()
        state.node_network, state.apiserver_host = net.index, net.host_ip
        return net

    def _spawn(self, state: ClusterState, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out = open(self.logs / f"{name}.log", "ab")
        # A new session: the components outlive `llmops-devcluster up`.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        out.close()
        state.pids[name] = proc.pid
        self._save(state)

    def _etcd_args(self, s: ClusterState) -> list[str]:
        client, peer = f"http://127.0.0.1:{s.etcd_port}", f"http://127.0.0.1:{s.etcd_peer_port}"
        return [
            "--name=llmops", f"--data-dir={self.root / 'etcd-data'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=llmops={peer}",
            # A throw-away development store: durability is not worth the fsync latency.
            "--unsafe-no-fsync", "--log-level=warn",
        ]

    def _apiserver_args(self, s: ClusterState) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://127.0.0.1:{s.etcd_port}",
            f"--bind-address={s.apiserver_host}", f"--advertise-address={s.apiserver_host}", f"--secure-port={s.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            # kubectl logs/exec: reach the kubelet at its InternalIP, authenticated by a client certificate.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}", f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false", "--v=1",
        ] + (
            # Endpoints may not hold a loopback address: without a real node, no reconciling of the kubernetes
            # Service; with one, it points at the host end of the node's link, where pods reach the API server.
            ["--endpoint-reconciler-type=none"] if s.node_network is None else []
        ) + ([f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}"] if self.audit_policy else [])

    def _controller_manager_args(self, configs: dict[str, Path]) -> list[str]:
        return [
            f"--kubeconfig={configs['controller-manager']}", "--leader-elect=false", "--secure-port=0",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki / 'sa.key'}", f"--root-ca-file={self.pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-job-syncs=20",
            "--v=1",
        ]

    def _wait_healthy(self, token: str, deadline: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        url = f"{self.server}/readyz"
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except Exception as exc:  # not up yet
                last = str(exc)
            time.sleep(0.3)
        raise ClusterError(f"kube-apiserver not ready in time ({last}); see {self.logs / 'kube-apiserver.log'}")

    def _wait_nodes_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            out = self.kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode == 0:
                items = json.loads(out.stdout)["items"]
                ready = [
                    n for n in items
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
                ]
                if items and len(ready) == len(items):
                    return
            time.sleep(0.5)
        raise ClusterError(f"nodes not Ready in time; see {self.logs / 'kwok.log'} and {self.logs / 'kubelet.log'}")

    def _check_alive(self) -> None:
        state = self.state()
        for name, pid in (state.pids.items() if state else []):
            if not _alive(pid):
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ClusterError(f"{name} exited during start-up; last log lines:\n{tail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited child not yet reaped) still answers kill 0.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _terminate(pid: int, grace: float = 10) -> None:
    if not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def default_root() -> Path:
    return Path(os.environ.get("LLMOPS_CLUSTER_DIR", Path.home() / ".local" / "state" / "llmops" / "cluster"))
