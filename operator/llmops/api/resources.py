"""Compute resources of the workloads."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .cel import rule, rules
from .common import ApiModel, Quantity

GPU_TYPE_DESCRIPTION = (
    "GPU product as NVIDIA GPU feature discovery labels it (nvidia.com/gpu.product), "
    "e.g. NVIDIA-H100-80GB-HBM3. Pods are pinned to nodes with that label; the VRAM "
    "pre-flight uses its memory."
)


class JobResources(ApiModel):
    """Nodes, GPUs and host resources of a training job."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            # A CPU job pinned to a GPU product would hold a GPU node without using its GPUs.
            rule(
                "!has(self.gpuType) || !has(self.gpusPerNode) || self.gpusPerNode > 0",
                "gpuType needs gpusPerNode 1 or more: gpusPerNode 0 trains on CPU; use scheduling.nodeSelector to pick CPU nodes",
                field_path=".gpuType",
                reason="FieldValueForbidden",
            ),
        )
    )

    nodes: int = Field(1, ge=1, le=256, description="Number of nodes (pods). More than one makes an Indexed Job with a rendezvous.")
    gpus_per_node: int = Field(
        1,
        ge=0,
        le=16,
        description=(
            "GPUs per node (nvidia.com/gpu requests = limits); one process per GPU. 0 trains on CPU: one process "
            "per node, no GPU requested, no GPU toleration or product selector, no VRAM pre-flight; method qlora, "
            "precision bf16 or fp16, DeepSpeed offload and gpuType are then refused."
        ),
    )
    gpu_type: str | None = Field(None, max_length=128, description=GPU_TYPE_DESCRIPTION)
    cpu: Quantity | None = Field(None, description="CPU request and limit per pod, e.g. 8 (with gpusPerNode 0 it also sets the training threads).")
    memory: Quantity | None = Field(None, description="Memory request and limit per pod, e.g. 64Gi.")
    shared_memory: Quantity | None = Field(
        None, description="Size of /dev/shm (a memory-backed emptyDir); data loaders and NCCL need more than the 64Mi default."
    )


class WorkerResources(ApiModel):
    """GPUs and host resources of a single-pod workload or of one serving replica."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per pod (nvidia.com/gpu requests = limits). 0 runs on CPU.")
    gpu_type: str | None = Field(None, max_length=128, description=GPU_TYPE_DESCRIPTION)
    cpu: Quantity | None = Field(None, description="CPU request and limit per pod.")
    memory: Quantity | None = Field(None, description="Memory request and limit per pod.")
    shared_memory: Quantity | None = Field(None, description="Size of /dev/shm.")
