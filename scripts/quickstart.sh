#!/usr/bin/env bash
# Set up, start the local control plane (real etcd, kube-apiserver,
# controller-manager, scheduler; kwok GPU nodes), install the CRDs, run the
# operator, apply examples/ and show what happens to them.
# Stop everything with: .venv/bin/llmops-devcluster down
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-dev} bash scripts/setup.sh
.venv/bin/llmops-devcluster up --crds crds --operator
kubectl() { .venv/bin/llmops-devcluster kubectl "$@"; }
kubectl apply -f examples/local/
kubectl apply -f examples/
echo
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.memory
echo
for i in 1 2 3 4 5 6; do sleep 2; done
kubectl get llmops
echo
kubectl get jobs,pods -o wide
echo
echo "Cluster and operator left running. Use them with: $(.venv/bin/llmops-devcluster env)"
echo "  kubectl describe ftj tinyllama-support-lora     # conditions and events"
echo "  .venv/bin/llmops-devcluster down                # stop everything"
