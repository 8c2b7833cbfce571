#!/usr/bin/env bash
# Set up, start the local cluster (real etcd, kube-apiserver, controller-manager, scheduler;
# kwok GPU nodes; a real CPU node running real containers), build the images, install the
# CRDs, run the operator, and apply examples/: the GPU examples run on simulated nodes, the
# CPU examples really run on the real node: 06 fine-tunes a tiny model, 07 merges and prunes it,
# 05 serves the result with the CPU engine.
# Stop everything with: .venv/bin/llmops-devcluster down
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-dev} LLMOPS_SKIP_RUNNER_VENVS=1 bash scripts/setup.sh
devcluster() { .venv/bin/llmops-devcluster "$@"; }
kubectl() { devcluster kubectl "$@"; }
devcluster up --crds crds --operator
real_node=false
if kubectl get node local-cpu >/dev/null 2>&1; then
  real_node=true
  devcluster images build >/dev/null   # cached: minutes the first time (the runner's ML stack), seconds after
  devcluster images load
fi
kubectl apply -f examples/local/cluster-setup.yaml
if $real_node; then
  kubectl apply -f examples/local/tiny-inputs.yaml
  kubectl wait --for=condition=complete job/make-tiny-inputs --timeout=600s
  kubectl apply -f examples/
else
  echo "no real node here: the CPU examples (05, 06, 07) are left out; the GPU examples run on simulated nodes"
  for f in examples/*.yaml; do
    case "$f" in examples/05-*|examples/06-*|examples/07-*) ;; *) kubectl apply -f "$f" ;; esac
  done
fi
echo
kubectl get nodes -L nvidia.com/gpu.product,llmops.dev/real-node
echo
if $real_node; then
  echo "waiting for tiny-cpu-lora to train on the real node (a minute or two)..."
  kubectl wait ftj/tiny-cpu-lora --for=jsonpath='{.status.phase}'=Succeeded --timeout=600s
  echo "waiting for tiny-cpu-pruned to merge and prune its output (it waited for the fine-tune)..."
  kubectl wait cpj/tiny-cpu-pruned --for=jsonpath='{.status.phase}'=Succeeded --timeout=600s
  echo "waiting for tiny-cpu to serve the pruned model on the real node..."
  kubectl wait lis/tiny-cpu --for=jsonpath='{.status.phase}'=Ready --timeout=300s
fi
kubectl get llmops
echo
kubectl get jobs,pods -o wide
echo
echo "Cluster and operator left running. Use them with: $(devcluster env)"
echo "  kubectl describe ftj tiny-cpu-lora              # the real run: conditions, events, result metrics"
echo "  kubectl describe cpj tiny-cpu-pruned            # the real compression: stage figures, quality gate"
echo "  kubectl describe lis tiny-cpu                   # the real CPU server: replicas, adapters, URL"
echo "  kubectl describe ftj tinyllama-support-lora     # a simulated GPU run"
echo "  .venv/bin/llmops-devcluster down                # stop everything"
