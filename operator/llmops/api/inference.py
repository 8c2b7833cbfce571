"""InferenceService: serve a model (and LoRA adapters) behind an OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .cel import DEFAULTED, exactly_one, rule, rules
from .common import ApiModel, CommonStatus, ImageOverride, PodMetadata, ObjectRef, Scheduling, SecretKeyRef, ServicePhase, Uri
from .resources import WorkerResources


class ServedModelSource(ApiModel):
    """The model to serve: a location, or the output of a FineTuneJob or CompressionJob."""

    model_config = ConfigDict(
        json_schema_extra=rules(exactly_one(["uri", "fineTuneJob", "compressionJob"], "the model source"))
    )

    uri: Uri | None = Field(None, description="Model location.")
    fine_tune_job: ObjectRef | None = Field(None, description="Serve this FineTuneJob's output once it succeeds.")
    compression_job: ObjectRef | None = Field(None, description="Serve this CompressionJob's output once it succeeds.")
    revision: str | None = Field(None, max_length=128, description="Hub revision.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="Secret with a hub or object-store token.")
    served_name: str | None = Field(None, max_length=253, description="Model name clients send; default: the object's name.")


class Adapter(ApiModel):
    """A LoRA adapter served on top of the base model."""

    model_config = ConfigDict(json_schema_extra=rules(exactly_one(["uri", "fineTuneJob"], "an adapter")))

    name: str = Field(max_length=63, pattern=r"^[a-zA-Z0-9][-_.a-zA-Z0-9]*$", description="Model name clients use for the adapter.")
    uri: Uri | None = Field(None, description="Adapter location.")
    fine_tune_job: ObjectRef | None = Field(None, description="A lora/qlora FineTuneJob whose adapter is served.")


class VllmOptions(ApiModel):
    """vLLM engine settings."""

    tensor_parallel_size: int = Field(1, ge=1, le=16, description="GPUs a replica shards the model over.")
    max_model_len: int | None = Field(None, ge=16, description="Context length; default the model's.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take.")
    quantization: str | None = Field(None, max_length=32, description="vLLM --quantization (e.g. awq, fp8); detected from the model by default.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="Weights and activations dtype.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes.")
    max_loras: int | None = Field(None, ge=1, le=256, description="Adapters resident at once.")
    extra_args: list[str] | None = Field(None, max_length=64, description="Further vLLM command-line arguments.")


class Autoscaling(ApiModel):
    """Horizontal autoscaling of replicas."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                field_path=".minReplicas",
                reason="FieldValueInvalid",
            )
        )
    )

    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas (0 allows scale to zero).")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    metric: Literal["concurrency", "waiting-requests", "kv-cache-utilization", "rps"] = Field(
        "concurrency",
        description="Signal scaled on, from the server's own series: requests in flight per replica (concurrency), "
                    "requests queued (waiting-requests), KV-cache usage 0-1 (kv-cache-utilization), or requests/s (rps).",
    )
    target: float = Field(gt=0, description="Target value of the metric per replica.")


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            rule(
                "self.engine != 'vllm' || self.resources.gpus >= 1",
                "the vllm engine needs at least one GPU per replica",
                field_path=".resources.gpus",
                reason="FieldValueInvalid",
            ),
            rule(
                "!has(self.vllm) || self.vllm.tensorParallelSize <= self.resources.gpus",
                "vllm.tensorParallelSize may not exceed resources.gpus",
                field_path=".vllm.tensorParallelSize",
                reason="FieldValueInvalid",
            ),
            rule(
                "!has(self.vllm) || self.engine == 'vllm'",
                "vllm options may only be set when engine is vllm",
                field_path=".vllm",
                reason="FieldValueForbidden",
            ),
        )
    )

    model: ServedModelSource = Field(description="The model served.")
    adapters: list[Adapter] | None = Field(None, max_length=64, description="LoRA adapters served beside the base model.")
    engine: Literal["vllm", "transformers"] = Field("vllm", description="vllm (GPU) or transformers (CPU, small models, tests).")
    vllm: VllmOptions | None = Field(None, description="vLLM settings.")
    replicas: int = Field(1, ge=0, le=1000, description="Replicas when autoscaling is not set.")
    autoscaling: Autoscaling | None = Field(None, description="Autoscaling; overrides replicas.")
    resources: WorkerResources = Field(default_factory=WorkerResources, description="GPUs and host resources per replica.", json_schema_extra=DEFAULTED)
    scheduling: Scheduling | None = Field(None, description="Node selection, tolerations and priority.")
    image: ImageOverride | None = Field(None, description="Server image override.")
    pod_metadata: PodMetadata | None = Field(None, description="Labels and annotations added to the pods (applies to pods created after a change).")
    startup_timeout_seconds: int = Field(
        1800, ge=60, le=86400,
        description="Time a replica may take to load its model before it is restarted (startupProbe budget; "
                    "no liveness check runs while loading). Big models on slow storage need the generous default.",
    )


class AdapterStatus(ApiModel):
    """One adapter as the replicas serve it."""

    name: str = Field(description="Model name clients use.")
    source: str = Field(description="Where it comes from: a URI, or finetunejob/<name>.")
    uri: str | None = Field(None, description="The adapter's location, once known (kept if its FineTuneJob goes).")
    state: Literal["Pending", "Loading", "Loaded", "Failed"] = Field(description="Pending (input not ready), Loading, Loaded on every ready replica, or Failed.")
    message: str | None = Field(None, description="Why it is pending or failed (the server's words).")


class InferenceServiceStatus(CommonStatus):
    """Observed state of an InferenceService."""

    phase: ServicePhase | None = Field(None, description="Pending, Loading, Ready, Degraded or Failed.")
    url: str | None = Field(None, description="In-cluster URL of the OpenAI-compatible endpoint.")
    model_uri: str | None = Field(None, description="Resolved model location being served.")
    model_source: str | None = Field(None, description="What spec.model named when modelUri was resolved (a URI, or <kind>/<name>).")
    model_format: str | None = Field(None, description="compressed-tensors or onnx when the input CompressionJob quantized the model.")
    replicas: int | None = Field(None, description="Replicas wanted.")
    ready_replicas: int | None = Field(None, description="Replicas serving.")
    served_model_name: str | None = Field(None, description="Model name clients send for the base model.")
    adapters: list[AdapterStatus] | None = Field(None, description="Each adapter, its source and state.")
    scaler: Literal["None", "HPA", "KEDA"] | None = Field(None, description="What scales the replicas: nothing (spec.replicas), a HorizontalPodAutoscaler, or a KEDA ScaledObject.")
    image: str | None = Field(None, description="Server image.")
