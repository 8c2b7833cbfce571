"""Build the control plane's binaries from the Go module proxy, once, into a cache.

There is no binary download: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl are compiled from the pinned module in gomod/ (its
go.mod replaces k8s.io/kubernetes's staging modules by their published v0.X.Y
twins), kwok with `go install` at a pinned version. The cache lives outside the
repository (``$LLMOPS_CACHE`` or ``~/.cache/llmops``) and is keyed by the
versions and the go.mod contents, so changing a pin rebuilds.
"""

from __future__ import annotations

import fcntl
import hashlib
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


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("LLMOPS_CACHE", Path.home() / ".cache" / "llmops"))


def _build_key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((GOMOD_DIR / name).read_bytes())
    digest.update(f"{KUBERNETES_VERSION} {ETCD_VERSION} {KWOK_VERSION} {HELM_VERSION}".encode())
    return digest.hexdigest()[:12]


def bin_dir() -> Path:
    return cache_root() / f"k8s-{KUBERNETES_VERSION}-{_build_key()}" / "bin"


def binaries_present(directory: Path | None = None) -> bool:
    directory = directory or bin_dir()
    return all((directory / name).is_file() for name in COMPONENTS)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log) -> None:
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def ensure_binaries(log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Return the folder holding every component, building what is missing."""
    target = bin_dir()
    if binaries_present(target):
        return target
    if shutil.which("go") is None:
        raise BuildError("Go is needed to build the local control plane (https://go.dev/doc/install); `go` is not on PATH.")
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        # Two test sessions may start at once: the second waits for the first's build.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binaries_present(target):
            return target
        started = time.monotonic()
        log(f"building Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION} and helm {HELM_VERSION} into {target} (once; several minutes)")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        with tempfile.TemporaryDirectory(prefix="llmops-gomod-") as work:
            # The package folder may be read-only (site-packages): build in a copy.
            for name in ("go.mod", "go.sum"):
                shutil.copy(GOMOD_DIR / name, Path(work) / name)
            stamp = "k8s.io/component-base/version"
            minor = KUBERNETES_VERSION.split(".")[1]
            ldflags = (
                f"-s -w -X {stamp}.gitVersion={KUBERNETES_VERSION} -X {stamp}.gitMajor=1 "
                f"-X {stamp}.gitMinor={minor} -X {stamp}.gitTreeState=clean"
            )
            if not all((target / name).is_file() for name in KUBE_PACKAGES):
                _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(target) + "/", *KUBE_PACKAGES.values()], Path(work), env, log)
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
        log(f"built in {time.monotonic() - started:.0f}s")
    if not binaries_present(target):
        raise BuildError(f"build finished but {target} lacks some of {', '.join(COMPONENTS)}")
    return target
