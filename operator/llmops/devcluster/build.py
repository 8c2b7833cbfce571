"""Build the local cluster's binaries from the Go module proxy, once, into a cache.

There is no binary download: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl are compiled from the pinned module in gomod/ (its
go.mod replaces k8s.io/kubernetes's staging modules by their published v0.X.Y
twins), kwok with `go install` at a pinned version. The real node's parts are a
second set: kubelet and kube-proxy from the same module as the control plane
(same version, same stamping), containerd 2.x from gomod-node/, and
local-path-provisioner from its own module's source. For the tests only, Argo CD's
CLI from gomod-argocd/ (with the Go toolchain its go.mod asks for, from the proxy too):
`python -m llmops.devcluster.build argocd`. The cache lives outside the
repository (``$LLMOPS_CACHE`` or ``~/.cache/llmops``) and is keyed by the
versions and the go.mod contents, so changing a pin rebuilds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"  # the etcd line k8s.io/kubernetes v1.36.3 pins
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"  # to lint and render the chart in tests
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")

GOMOD_DIR = Path(__file__).with_name("gomod")
KUBE_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"

# The real node. runc, the CNI plugins and iptables come from the distribution (apt).
CONTAINERD_VERSION = "v2.4.2"
LOCAL_PATH_PROVISIONER_VERSION = "v0.0.30"
NODE_GOMOD_DIR = Path(__file__).with_name("gomod-node")
NODE_KUBE_PACKAGES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
CONTAINERD_PACKAGES = {
    name: f"github.com/containerd/containerd/v2/cmd/{name}" for name in ("containerd", "ctr", "containerd-shim-runc-v2")
}
LOCAL_PATH_MODULE = "github.com/rancher/local-path-provisioner"
NODE_COMPONENTS = (*NODE_KUBE_PACKAGES, *CONTAINERD_PACKAGES, "local-path-provisioner")

# Argo CD's CLI, for the tests only: `argocd admin settings resource-overrides health` runs the health
# checks in argocd/health/ with Argo CD's own Lua runtime. argo-cd's go.mod needs Go 1.27: the pinned
# toolchain comes from the module proxy too (GOTOOLCHAIN), whatever Go is installed.
ARGOCD_VERSION = "v3.6.1"
ARGOCD_GO_TOOLCHAIN = "go1.27.4"
ARGOCD_GOMOD_DIR = Path(__file__).with_name("gomod-argocd")
ARGOCD_PACKAGE = "github.com/argoproj/argo-cd/v3/cmd"  # the multi-call binary: named argocd, it is the CLI


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("LLMOPS_CACHE", Path.home() / ".cache" / "llmops"))


def _key(folders: tuple[Path, ...], pins: str) -> str:
    """A cache key: the go.mod and go.sum of `folders`, and the pinned versions."""
    digest = hashlib.sha256()
    for folder in folders:
        for name in ("go.mod", "go.sum"):
            digest.update((folder / name).read_bytes())
    digest.update(pins.encode())
    return digest.hexdigest()[:12]


def _build_key() -> str:
    return _key((GOMOD_DIR,), f"{KUBERNETES_VERSION} {ETCD_VERSION} {KWOK_VERSION} {HELM_VERSION}")


def _node_build_key() -> str:
    return _key((GOMOD_DIR, NODE_GOMOD_DIR), f"{KUBERNETES_VERSION} {CONTAINERD_VERSION} {LOCAL_PATH_PROVISIONER_VERSION}")


def _argocd_build_key() -> str:
    return _key((ARGOCD_GOMOD_DIR,), f"{ARGOCD_VERSION} {ARGOCD_GO_TOOLCHAIN}")


def argocd_binary() -> Path:
    """Where the pinned `argocd` CLI is (or will be, once `ensure_argocd()` built it)."""
    return cache_root() / f"argocd-{ARGOCD_VERSION}-{_argocd_build_key()}" / "bin" / "argocd"


def bin_dir() -> Path:
    return cache_root() / f"k8s-{KUBERNETES_VERSION}-{_build_key()}" / "bin"


def node_bin_dir() -> Path:
    return cache_root() / f"node-{KUBERNETES_VERSION}-{_node_build_key()}" / "bin"


def binaries_present(directory: Path | None = None) -> bool:
    directory = directory or bin_dir()
    return all((directory / name).is_file() for name in COMPONENTS)


def node_binaries_present(directory: Path | None = None) -> bool:
    directory = directory or node_bin_dir()
    return all((directory / name).is_file() for name in NODE_COMPONENTS)


def _kube_ldflags() -> str:
    stamp = "k8s.io/component-base/version"
    minor = KUBERNETES_VERSION.split(".")[1]
    return (
        f"-s -w -X {stamp}.gitVersion={KUBERNETES_VERSION} -X {stamp}.gitMajor=1 "
        f"-X {stamp}.gitMinor={minor} -X {stamp}.gitTreeState=clean"
    )


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log) -> None:
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def ensure_binaries(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Return the folder holding every component, building what is missing."""
    return _cached_build(
        bin_dir(), COMPONENTS, _build_control_plane, log,
        what=f"Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION} and helm {HELM_VERSION} (once; several minutes)",
    )


def _build_control_plane(target: Path, log) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory(prefix="llmops-gomod-") as work:
        # The package folder may be read-only (site-packages): build in a copy.
        for name in ("go.mod", "go.sum"):
            shutil.copy(GOMOD_DIR / name, Path(work) / name)
        if not all((target / name).is_file() for name in KUBE_PACKAGES):
            _run(["go", "build", "-trimpath", "-ldflags", _kube_ldflags(), "-o", str(target) + "/", *KUBE_PACKAGES.values()], Path(work), env, log)
        if not (target / "etcd").is_file():
            _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target / "etcd"), ETCD_PACKAGE], Path(work), env, log)
    # kwok and helm carry no replace directives: `go install pkg@version` builds them as pinned.
    for package, version in ((KWOK_PACKAGE, KWOK_VERSION), (HELM_PACKAGE, HELM_VERSION)):
        if not (target / package.rsplit("/", 1)[-1]).is_file():
            _run(
                ["go", "install", "-trimpath", "-ldflags", "-s -w", f"{package}@{version}"],
                target,
                {**env, "GOBIN": str(target), "GOFLAGS": ""},
                log,
            )


def ensure_node_binaries(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Return the folder holding the real node's programs, building what is missing."""
    return _cached_build(
        node_bin_dir(), NODE_COMPONENTS, _build_node, log,
        what=f"kubelet and kube-proxy {KUBERNETES_VERSION}, containerd {CONTAINERD_VERSION} and "
             f"local-path-provisioner {LOCAL_PATH_PROVISIONER_VERSION} (once; a few minutes)",
    )


def _build_node(target: Path, log) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory(prefix="llmops-gomod-node-") as work:
        kube, node, lpp = Path(work, "kube"), Path(work, "node"), Path(work, "lpp")
        for source, copy in ((GOMOD_DIR, kube), (NODE_GOMOD_DIR, node)):
            copy.mkdir()
            for name in ("go.mod", "go.sum"):
                shutil.copy(source / name, copy / name)
        _run(["go", "build", "-trimpath", "-ldflags", _kube_ldflags(), "-o", str(target) + "/", *NODE_KUBE_PACKAGES.values()],
             kube, env, log)
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target) + "/", *CONTAINERD_PACKAGES.values()],
             node, env, log)
        # local-path-provisioner cannot be a dependency of another module (it imports logrus under
        # two spellings, folded only by its own go.mod): build its own module's pinned source.
        source = _module_source(f"{LOCAL_PATH_MODULE}@{LOCAL_PATH_PROVISIONER_VERSION}", Path(work), env, log)
        shutil.copytree(source, lpp)
        subprocess.run(["chmod", "-R", "u+w", str(lpp)], check=True)
        shutil.rmtree(lpp / "vendor", ignore_errors=True)  # module zips carry an incomplete vendor/
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target / "local-path-provisioner"), "."], lpp, env, log)


def ensure_argocd(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Return the pinned `argocd` CLI, building it once (a cold build compiles Argo CD: many minutes)."""
    target = _cached_build(argocd_binary().parent, ("argocd",), _build_argocd, log,
                           what=f"the argocd CLI {ARGOCD_VERSION} with Go {ARGOCD_GO_TOOLCHAIN} (once; about 10 minutes of compiling on 2 cores, after ~400 MB of modules)")
    return target / "argocd"


def _build_argocd(target: Path, log) -> None:
    # -buildvcs=false: the work folder is no repository. GOTOOLCHAIN: argo-cd v3.6 needs Go 1.27.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false", "GOTOOLCHAIN": ARGOCD_GO_TOOLCHAIN}
    stamp = f"-X github.com/argoproj/argo-cd/v3/common.version={ARGOCD_VERSION.lstrip('v')}"
    with tempfile.TemporaryDirectory(prefix="llmops-gomod-argocd-") as work:
        for name in ("go.mod", "go.sum"):
            shutil.copy(ARGOCD_GOMOD_DIR / name, Path(work) / name)
        _run(["go", "build", "-trimpath", "-ldflags", f"-s -w {stamp}", "-o", str(target / "argocd"), ARGOCD_PACKAGE], Path(work), env, log)


def _cached_build(target: Path, components: tuple[str, ...], build, log, what: str) -> Path:
    """Run `build(target, log)` once per cache key: two test sessions may start at once, the second waits."""
    def present() -> bool:
        return all((target / name).is_file() for name in components)

    if present():
        return target
    if shutil.which("go") is None:
        raise BuildError(f"Go is needed to build {what.split(' (')[0]} (https://go.dev/doc/install); `go` is not on PATH.")
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():
            return target
        started = time.monotonic()
        log(f"building {what} into {target}")
        build(target, log)
        log(f"built in {time.monotonic() - started:.0f}s")
    if not present():
        raise BuildError(f"build finished but {target} lacks some of {', '.join(components)}")
    return target


def _module_source(module: str, work: Path, env: dict[str, str], log) -> Path:
    log(f"$ go mod download -json {module}")
    proc = subprocess.run(["go", "mod", "download", "-json", module], cwd=work, env={**env, "GOFLAGS": ""},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"go mod download {module} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Path(json.loads(proc.stdout)["Dir"])


def main(argv: list[str] | None = None) -> int:
    """`python -m llmops.devcluster.build argocd`: build (once) and print the argocd CLI's path.
    (`llmops-devcluster build` builds the cluster's binaries.)"""
    args = sys.argv[1:] if argv is None else argv
    if args != ["argocd"]:
        print("usage: python -m llmops.devcluster.build argocd", file=sys.stderr)
        return 2
    print(ensure_argocd())
    return 0


if __name__ == "__main__":
    sys.exit(main())
