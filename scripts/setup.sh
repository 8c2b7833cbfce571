#!/usr/bin/env bash
# Install everything the project needs into .venv (idempotent) and build the
# local control plane's binaries once (cached in ~/.cache/llmops).
# EXTRAS picks the Python extras (default: dev,finetune).
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
.venv/bin/python -m pip install -q -e ".[${EXTRAS:-dev,finetune}]"
# The compression runner families cannot share one environment (llm-compressor and optimum-onnx
# pin different transformers): each gets the venv its image is built from, and the tests run the
# runner in it (tests/compress/). LLMOPS_SKIP_RUNNER_VENVS=1 leaves them out.
if [ -z "${LLMOPS_SKIP_RUNNER_VENVS:-}" ]; then
  for family in compress compress-onnx; do
    [ -x ".venv-$family/bin/python" ] || python3 -m venv ".venv-$family"
    ".venv-$family/bin/python" -m pip install -q --upgrade pip
    ".venv-$family/bin/python" -m pip install -q -e ".[$family]"
  done
fi
.venv/bin/llmops-devcluster build >/dev/null
