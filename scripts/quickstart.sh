#!/usr/bin/env bash
# The main job: fine-tune -> compress -> serve, for real, on the local cluster.
# Sets up, starts the local cluster (real etcd, kube-apiserver, controller-manager, scheduler;
# kwok GPU nodes; a real CPU node running real containers), builds and loads the images, installs
# the operator into the cluster with the Helm chart, makes a tiny base model and its dataset on a
# claim (no hub), and applies examples/: on the real node 06 fine-tunes a LoRA adapter, 07 merges
# and quantizes it to INT8 behind a quality gate, 05 serves that model and 08 the base with the raw
# adapter (the GPU examples 01-04 run on simulated nodes). It follows the chain, then asks the
# served models the held-out questions through their Services with the openai client.
#   bash scripts/quickstart.sh           run it (the cluster stays up afterwards)
#   bash scripts/quickstart.sh --down    tear it all down
set -euo pipefail
cd "$(dirname "$0")/.."
devcluster() { .venv/bin/llmops-devcluster "$@"; }
kubectl() { devcluster kubectl "$@"; }
if [ "${1:-}" = "--down" ]; then
  if [ -x .venv/bin/llmops-devcluster ]; then devcluster down; fi
  exit 0
fi
EXTRAS=${EXTRAS:-dev} LLMOPS_SKIP_RUNNER_VENVS=1 bash scripts/setup.sh
devcluster up --crds crds
real_node=false
if kubectl get node local-cpu >/dev/null 2>&1; then
  real_node=true
  devcluster images build >/dev/null   # cached: minutes the first time (the runners' ML stacks), seconds after
  devcluster images load
  # The operator runs in the cluster, from its image, as the chart installs it (its RBAC, its ServiceAccount).
  devcluster helm upgrade --install llmops charts/llmops --namespace llmops-system --create-namespace \
    --set hfEndpoint= --set progressInterval=2 --wait --timeout 5m >/dev/null
  echo "operator installed with the Helm chart (namespace llmops-system)"
else
  devcluster up --operator >/dev/null   # no node to run its pod on: the operator runs here instead
fi
kubectl apply -f examples/local/cluster-setup.yaml
if $real_node; then
  kubectl apply -f examples/local/tiny-inputs.yaml
  kubectl wait --for=condition=complete job/make-tiny-inputs --timeout=600s
  kubectl apply -f examples/
else
  echo "no real node here: the CPU examples (05-08) are left out; the GPU examples run on simulated nodes"
  for f in examples/0[1-4]-*.yaml; do kubectl apply -f "$f"; done
fi
echo
kubectl get nodes -L nvidia.com/gpu.product,llmops.dev/real-node
echo
if $real_node; then
  devcluster pipeline --timeout 900
else
  kubectl get llmops
fi
echo
echo "Cluster and operator left running. Use them with: $(devcluster env)"
echo "  kubectl describe ftj tinyllama-support-lora     # a simulated GPU run"
echo "  bash scripts/quickstart.sh --down               # stop everything"
