"""Simulated GPU nodes, labelled as NVIDIA GPU feature discovery labels real ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as GFD writes it
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class GpuProduct:
    product: str
    memory_mib: int


H100_80GB = GpuProduct("NVIDIA-H100-80GB-HBM3", 81559)
A100_40GB = GpuProduct("NVIDIA-A100-SXM4-40GB", 40960)
L4 = GpuProduct("NVIDIA-L4", 23034)

# The default pool: two H100 nodes (room for a 2 x 8 GPU job), one A100 and one
# L4 node (so GPU-type selection and too-small-GPU paths can be exercised).
DEFAULT_POOL: tuple[tuple[str, GpuProduct], ...] = (
    ("gpu-h100-0", H100_80GB),
    ("gpu-h100-1", H100_80GB),
    ("gpu-a100-0", A100_40GB),
    ("gpu-l4-0", L4),
)


def gpu_node(name: str, gpu: GpuProduct, gpus: int = 8, cpu: str = "96", memory: str = "1Ti") -> dict[str, Any]:
    """A Node object that kwok manages and the real scheduler counts GPUs on."""
    resources = {"cpu": cpu, "memory": memory, "pods": "110", GPU_RESOURCE: str(gpus), "ephemeral-storage": "2Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                GPU_PRODUCT_LABEL: gpu.product,
                GPU_MEMORY_LABEL: str(gpu.memory_mib),
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        # The taint GPU node pools carry so that only GPU workloads land there.
        "spec": {"taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }


def default_nodes(count: int | None = None) -> list[dict[str, Any]]:
    """The default pool, or `count` H100 nodes when a bigger pool is wanted (benchmarks)."""
    if count is None:
        return [gpu_node(name, gpu) for name, gpu in DEFAULT_POOL]
    return [gpu_node(f"gpu-h100-{i}", H100_80GB) for i in range(count)]
