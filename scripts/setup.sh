#!/usr/bin/env bash
# Install everything the project needs into .venv (idempotent) and build the
# local control plane's binaries once (cached in ~/.cache/llmops).
# EXTRAS picks the Python extras (default: dev,finetune).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
# openssl makes the local cluster's certificates; Prometheus scrapes the operator in the tests.
if ! need openssl || ! need git || ! need prometheus || ! need promtool; then
  if need apt-get; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openssl git prometheus >/dev/null
  else
    echo "setup: please install openssl, git and prometheus (with promtool)" >&2; exit 1
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
.venv/bin/llmops-devcluster build >/dev/null
