#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite: unit tests, tests against
# the real local control plane, and real CPU training of tiny models.
# GPU-marked tests skip themselves on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
