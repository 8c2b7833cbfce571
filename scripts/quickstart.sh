#!/usr/bin/env bash
# Set up, start the local control plane (real etcd, kube-apiserver,
# controller-manager, scheduler; kwok GPU nodes), install the CRDs, apply
# examples/ and show them. Stop it with: .venv/bin/llmops-devcluster down
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-dev} bash scripts/setup.sh
.venv/bin/llmops-devcluster up --crds crds
kubectl() { .venv/bin/llmops-devcluster kubectl "$@"; }
kubectl apply -f examples/
echo
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.memory
echo
kubectl get llmops
echo
echo "Cluster left running. Use it with: $(.venv/bin/llmops-devcluster env)"
