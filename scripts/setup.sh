#!/usr/bin/env bash
# Install everything the project needs into .venv (idempotent) and build the
# local control plane's binaries once (cached in ~/.cache/llmops).
# EXTRAS picks the Python extras (default: dev,finetune); every venv gets the runner images'
# torch (runner-torch), so identical files can be hard-linked across venvs (see below).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
# openssl makes the local cluster's certificates; Prometheus scrapes the operator in the tests.
# The real node (Linux, root): runc, the CNI plugins, iptables and conntrack for kube-proxy;
# buildah and debootstrap build the images without a Docker daemon or a registry; skopeo
# copies them, uncompressed and layer by layer, towards the node's containerd.
packages=(openssl git prometheus)
if [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ]; then
  packages+=(runc containernetworking-plugins iptables conntrack buildah skopeo debootstrap)
fi
missing=()
if need dpkg-query; then
  for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
else  # not Debian: ask for what is missing by command
  for cmd in openssl git prometheus promtool; do need "$cmd" || missing+=("$cmd"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if need apt-get; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]}" >&2; exit 1
  fi
fi
if ! need go; then
  echo "setup: Go (>= 1.26) is needed to build the local control plane: https://go.dev/doc/install" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS:-dev,finetune},runner-torch]"
# The compression runner families cannot share one environment (llm-compressor and optimum-onnx
# pin different transformers), nor can the serving runner (transformers 4.x for optimum-onnx, beside
# FastAPI) share the test venv's transformers 5.x: each gets the venv its image is built from, and
# the tests run the runner in it (tests/compress/, tests/serve/). LLMOPS_SKIP_RUNNER_VENVS=1 leaves them out.
if [ -z "${LLMOPS_SKIP_RUNNER_VENVS:-}" ]; then
  for family in compress compress-onnx serve; do
    [ -x ".venv-$family/bin/python" ] || python3 -m venv ".venv-$family"
    ".venv-$family/bin/python" -m pip install -q --upgrade pip
    ".venv-$family/bin/python" -m pip install -q -e ".[$family,runner-torch]"
  done
  # One torch (with its CUDA libraries, ~5 GB) per venv would quadruple the disk a clone needs:
  # the same files in every venv become one file with several links (util-linux hardlink). One
  # call over all of them: pairwise calls re-point .venv's file at each new copy in turn and leave
  # the earlier venvs with copies of their own.
  if need hardlink; then hardlink --content --minimum-size 1M --quiet .venv .venv-compress .venv-compress-onnx .venv-serve; fi
fi
.venv/bin/llmops-devcluster build >/dev/null
# The tests evaluate the Argo CD health checks (argocd/health/) with Argo CD's own CLI, built once
# from the Go module proxy like the control plane (cached; cold, with its ~400 MB of modules and
# Go 1.27: 4-10 min on 2 cores). Test-only, so left out with the runner venvs (the quickstart's set-up).
if [ -z "${LLMOPS_SKIP_RUNNER_VENVS:-}" ]; then
  .venv/bin/python -m llmops.devcluster.build argocd >/dev/null
fi
