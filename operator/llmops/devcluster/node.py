"""One real node beside the simulated GPU nodes: containerd, kubelet, kube-proxy, bridge CNI.

The node lives in a network namespace of its own (``llmops-<index>``), joined to the
host by a veth pair: its iptables rules (kube-proxy's, the CNI's), its bridge and its
net.* sysctls stay inside that namespace, so two clusters on one machine do not fight
over chains or ranges, and `down` undoes the whole network by deleting the namespace.
The processes share the host's mount namespace (``nsenter --net``, not ``ip netns
exec``, which would give each process private mounts): the kubelet's volume mounts
must be visible to containerd and runc.

    host (apiserver bound to HOST_IP)  ──veth──  netns: kubelet, containerd, kube-proxy (NODE_IP)
                                                     └─ bridge cni0 ─ pods (POD_CIDR)

The host routes POD_CIDR to the node, so a process on the host (the operator, a test)
reaches a pod at its real IP. Services are reachable from pods, and from the host with
`RealNode.exec_in_netns`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from .mounts import unmount_under

if TYPE_CHECKING:
    from .cluster import ClusterState, LocalCluster

NODE_NAME = "local-cpu"
REAL_NODE_LABEL = "llmops.dev/real-node"
NETNS_PREFIX = "llmops-"
MAX_NETWORKS = 200
# 10.250.<i>.0/30 joins host and node; 10.251.<i>.0/24 holds the node's pods.
LINK_NET, POD_NET = "10.250", "10.251"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
LOCAL_PATH_NAMESPACE = "local-path-storage"
STORAGE_CLASS = "local-path"
# The kubelet sets these on start; `down` puts back what it found.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
CGROUP_V1 = Path("/sys/fs/cgroup")
RUNTIME_ROOT = Path("/var/lib/llmops")
NODE_IMAGES = ("base", "pause")


@dataclass(frozen=True)
class NodeNetwork:
    index: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def host_veth(self) -> str:
        return f"llmops-h{self.index}"

    @property
    def host_ip(self) -> str:
        return f"{LINK_NET}.{self.index}.1"

    @property
    def node_ip(self) -> str:
        return f"{LINK_NET}.{self.index}.2"

    @property
    def pod_cidr(self) -> str:
        return f"{POD_NET}.{self.index}.0/24"

    @property
    def cgroup_root(self) -> str:
        return f"/llmops-{self.index}"

    @property
    def runtime_dir(self) -> Path:
        # Unix sockets live here (containerd's, the kubelet's device-plugin and pod-resources ones): a
        # socket path may not pass ~104 bytes, and a cluster folder can be deep (a test's tmp_path).
        return RUNTIME_ROOT / self.netns

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.runtime_dir / "kubelet"


def unsupported_reason() -> str | None:
    """Why this machine cannot run the real node, in one line; None when it can."""
    if platform.system() != "Linux":
        return f"a real node needs Linux (this is {platform.system()})"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, network namespaces); run as root or pass --no-real-node"
    if not (CGROUP_V1 / "memory").is_dir() and not (CGROUP_V1 / "cgroup.controllers").exists():
        return "a real node needs cgroups mounted at /sys/fs/cgroup"
    missing = [tool for tool in ("runc", "iptables", "nsenter", "ip", "conntrack") if shutil.which(tool) is None]
    if not any(Path(d, "bridge").exists() for d in CNI_BIN_DIRS):
        missing.append("CNI plugins (bridge, host-local, portmap)")
    if missing:
        return f"a real node needs {', '.join(missing)} (scripts/setup.sh installs them with apt)"
    return None


def _run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def allocate_network() -> NodeNetwork:
    """Claim the first free index: `ip netns add` fails when another cluster holds it."""
    for index in range(MAX_NETWORKS):
        net = NodeNetwork(index)
        if _run("ip", "netns", "add", net.netns, check=False).returncode != 0:
            continue
        try:
            _wire(net)
        except Exception:
            release_network(net)
            raise
        return net
    raise RuntimeError(f"no free node network: {MAX_NETWORKS} namespaces named {NETNS_PREFIX}* exist (`ip netns list`)")


def _wire(net: NodeNetwork) -> None:
    inside = ("ip", "-n", net.netns)
    _run("ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", "eth0", "netns", net.netns)
    _run("ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_veth)
    _run("ip", "link", "set", net.host_veth, "up")
    _run(*inside, "link", "set", "lo", "up")
    _run(*inside, "addr", "add", f"{net.node_ip}/30", "dev", "eth0")
    _run(*inside, "link", "set", "eth0", "up")
    _run(*inside, "route", "add", "default", "via", net.host_ip)
    _run("ip", "route", "replace", net.pod_cidr, "via", net.node_ip)
    # The node forwards between its veth and the pods' bridge; a namespace starts with it off.
    _run("nsenter", f"--net=/run/netns/{net.netns}", "sysctl", "-qw", "net.ipv4.ip_forward=1")


def release_network(net: NodeNetwork) -> None:
    # Deleting the namespace takes its veth end, bridge, routes and iptables rules with it;
    # the host's veth end and route go with the pair.
    _run("ip", "route", "del", net.pod_cidr, check=False)
    _run("ip", "netns", "del", net.netns, check=False)


def read_sysctls(names: tuple[str, ...]) -> dict[str, str]:
    return {name: Path("/proc/sys", *name.split(".")).read_text().strip() for name in names}


def restore_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        try:
            Path("/proc/sys", *name.split(".")).write_text(value)
        except OSError:
            pass


class RealNode:
    """The real node of one LocalCluster; its files live in <cluster>/node."""

    def __init__(self, cluster: "LocalCluster"):
        self.cluster = cluster
        self.root = cluster.root / "node"
        self.containerd_root = self.root / "containerd"  # images and snapshots; state and socket in the runtime dir
        self.cni_conf = self.root / "cni" / "net.d"
        self.volumes = self.root / "volumes"

    # -- commands ------------------------------------------------------------
    def ctr(self) -> list[str]:
        from .build import node_bin_dir

        return [str(node_bin_dir() / "ctr"), "--address", str(self._network().socket), "--namespace", "k8s.io"]

    def netns_command(self, net: NodeNetwork, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{net.netns}", *argv]

    def exec_in_netns(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a host program inside the node's network (to reach a Service's ClusterIP, say)."""
        return subprocess.run(self.netns_command(self._network(), argv), **kwargs)

    def _network(self) -> NodeNetwork:
        state = self.cluster.state()
        if state is None or state.node_network is None:
            raise RuntimeError(f"the cluster in {self.cluster.root} has no real node")
        return NodeNetwork(state.node_network)

    # -- lifecycle -------------------------------------------------------------
    def start(self, state: "ClusterState", net: NodeNetwork, tokens: dict[str, str], spawn: Callable, log=print) -> None:
        """Start containerd, load the node's images, then kubelet, kube-proxy and the volume provisioner."""
        from . import images
        from .build import ensure_node_binaries

        binaries = ensure_node_binaries(log)
        unmount_under(self.root, net.runtime_dir)  # what a cluster that died without `down` may have left at this index
        shutil.rmtree(net.runtime_dir, ignore_errors=True)
        for folder in (self.containerd_root, net.socket.parent, net.kubelet_root, self.cni_conf, self.volumes):
            folder.mkdir(parents=True, exist_ok=True)
        self.volumes.chmod(0o755)
        configs = self._write_configs(state, net, tokens, binaries)
        env = {**os.environ, "PATH": f"{binaries}:{os.environ.get('PATH', '')}"}

        spawn("containerd", self.netns_command(net, [str(binaries / "containerd"), f"--config={configs['containerd']}"]), env=env)
        self._wait_for(lambda: _run(*self.ctr(), "version", check=False).returncode == 0, "containerd", 30)
        # The sandbox image, and the base image the volume provisioner's helper pods run.
        images.load(self.ctr(), images.build(NODE_IMAGES, log=log), log=log)

        state.node_sysctls = read_sysctls(KUBELET_SYSCTLS)
        self._make_cgroup_root(net)
        spawn("kubelet", self.netns_command(net, [
            str(binaries / "kubelet"), f"--config={configs['kubelet']}", f"--kubeconfig={configs['kubelet-kubeconfig']}",
            f"--root-dir={net.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={net.node_ip}",
            f"--node-labels={REAL_NODE_LABEL}=true", "--v=1",
        ]), env=env)
        spawn("kube-proxy", self.netns_command(net, [str(binaries / "kube-proxy"), f"--config={configs['kube-proxy']}", "--v=1"]), env=env)
        self.cluster.apply(self._storage_objects())
        spawn("local-path-provisioner", [
            str(binaries / "local-path-provisioner"), "start", f"--kubeconfig={configs['provisioner-kubeconfig']}",
            f"--namespace={LOCAL_PATH_NAMESPACE}", f"--helper-image={images.BASE_IMAGE}",
            f"--config={configs['provisioner']}", "--configmap-name=local-path-config", "--service-account-name=default",
        ], env=env)

    def stop(self, state: "ClusterState") -> None:
        """Undo everything `start` did; safe to call on a half-started node."""
        if state.node_network is None:
            return
        net = NodeNetwork(state.node_network)
        self._kill_workloads(net)
        unmount_under(self.root, net.runtime_dir)
        release_network(net)
        shutil.rmtree(net.runtime_dir, ignore_errors=True)
        self._remove_cgroup_root(net)
        restore_sysctls(state.node_sysctls or {})

    # -- configuration -----------------------------------------------------------
    def _write_configs(self, state: "ClusterState", net: NodeNetwork, tokens: dict[str, str], binaries: Path) -> dict[str, Path]:
        from . import images
        from .cluster import SERVICE_CIDR, write_kubeconfig

        conf = self.root / "config"
        conf.mkdir(exist_ok=True)
        server = f"https://{net.host_ip}:{state.apiserver_port}"
        paths = {name: conf / f"{name}.kubeconfig" for name in ("kubelet", "kube-proxy", "provisioner")}
        for identity, path in (("kubelet", paths["kubelet"]), ("kube-proxy", paths["kube-proxy"]),
                               ("local-path-provisioner", paths["provisioner"])):
            write_kubeconfig(path, server, self.cluster.pki / "ca.crt", tokens[identity], identity)
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "bridge").exists())
        containerd = conf / "containerd.toml"
        containerd.write_text(_containerd_toml(self.containerd_root, net, self.cni_conf, cni_bin, images.PAUSE_IMAGE))
        (self.cni_conf / "10-llmops.conflist").write_text(json.dumps(_cni_conflist(net, self.root / "cni" / "ipam"), indent=2))
        kubelet = conf / "kubelet.yaml"
        kubelet.write_text(yaml.safe_dump(_kubelet_config(self.cluster.pki / "ca.crt", net)))
        proxy = conf / "kube-proxy.yaml"
        proxy.write_text(yaml.safe_dump(_kube_proxy_config(paths["kube-proxy"], net, SERVICE_CIDR)))
        provisioner = conf / "local-path.json"
        provisioner.write_text(json.dumps({"nodePathMap": [{"node": NODE_NAME, "paths": [str(self.volumes)]}]}))
        return {"containerd": containerd, "kubelet": kubelet, "kube-proxy": proxy, "provisioner": provisioner,
                "kubelet-kubeconfig": paths["kubelet"], "provisioner-kubeconfig": paths["provisioner"]}

    def _storage_objects(self) -> list[dict[str, Any]]:
        from . import images

        helper_pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
            "spec": {"containers": [{"name": "helper-pod", "image": images.BASE_IMAGE, "imagePullPolicy": "IfNotPresent"}]},
        }
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOCAL_PATH_NAMESPACE}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "local-path-config", "namespace": LOCAL_PATH_NAMESPACE},
             "data": {
                 "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                 "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                 "helperPod.yaml": yaml.safe_dump(helper_pod),
             }},
            {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
             "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
             "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"},
            # The control plane authorizes with RBAC only (no Node authorizer): the node role goes to the nodes group.
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llmops:nodes"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]},
        ]

    # -- cgroups, processes, mounts -------------------------------------------------
    def _controllers(self) -> list[Path]:
        return [p for p in CGROUP_V1.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "unified"
                and (p / "cgroup.procs").exists()]

    def _make_cgroup_root(self, net: NodeNetwork) -> None:
        # The kubelet's cgroupRoot must exist; a cgroup of its own per cluster keeps two kubelets apart.
        for controller in self._controllers():
            path = controller / net.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty: inherit the parent's
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((controller / name).read_text())

    def _remove_cgroup_root(self, net: NodeNetwork) -> None:
        for controller in self._controllers():
            top = controller / net.cgroup_root.lstrip("/")
            if not top.exists():
                continue
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(folder)
            _rmdir(top)

    def _kill_workloads(self, net: NodeNetwork) -> None:
        """SIGKILL every container process (the node's cgroups) and every shim of this containerd."""
        for _ in range(3):
            pids = set()
            for controller in self._controllers():
                top = controller / net.cgroup_root.lstrip("/")
                if top.exists():
                    for procs in top.rglob("cgroup.procs"):
                        pids.update(int(p) for p in procs.read_text().split())
            pids.update(_shims_of(net.socket))
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    @staticmethod
    def _wait_for(ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready in {timeout:.0f}s")


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _shims_of(socket: Path) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
            pids.add(int(entry.name))
    return pids


def _containerd_toml(root: Path, net: NodeNetwork, cni_conf: Path, cni_bin: str, pause_image: str) -> str:
    # containerd 2.x config (version 3). restrict_oom_score_adj: without CAP_SYS_RESOURCE, runc cannot
    # lower a container's oom_score_adj and every sandbox fails ("can't get final child's PID from pipe").
    return f"""version = 3
root = "{root / 'root'}"
state = "{net.socket.parent / 'state'}"
imports = []

[grpc]
  address = "{net.socket}"
[ttrpc]
  address = "{net.socket}.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause_image}"
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{net.socket.parent / 'runc'}"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"
      use_internal_loopback = true
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
"""


def _cni_conflist(net: NodeNetwork, ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "llmops",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": net.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": str(ipam_dir)},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _kubelet_config(ca: Path, net: NodeNetwork) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True}, "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{net.socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": net.cgroup_root,
        "failCgroupV1": False,  # Kubernetes >= 1.35 refuses cgroup v1 hosts unless told otherwise
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # Images are imported, never pulled: image GC must not delete them on a full disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def _kube_proxy_config(kubeconfig: Path, net: NodeNetwork, service_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": net.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": net.pod_cidr,
        # Leave the host's conntrack table size and timeouts alone (they are not per namespace).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        # Without br_netfilter a pod reaching a Service backed by a pod on the same bridge gets the
        # reply straight over the bridge, un-NATed; masquerading every Service packet routes it back.
        "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
    }
