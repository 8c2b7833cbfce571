# Fine-tuning runner image: `python -m llmops_runners.finetune --config /etc/llmops/config.json`.
#   CPU:  docker build -f images/finetune.Dockerfile -t llmops-finetune .
#   GPU:  docker build -f images/finetune.Dockerfile --build-arg EXTRAS=finetune-gpu -t llmops-finetune-gpu .
# The PyPI torch wheels carry their CUDA libraries, so one slim base serves both; the GPU image
# needs the NVIDIA container runtime on the node. g++ stays in the image because DeepSpeed
# compiles its CPU ops (CPU Adam for optimizer offload, shared-memory comm) on first use.
FROM python:3.11-slim

ARG EXTRAS=finetune
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runners ./runners
RUN pip install --no-cache-dir ".[${EXTRAS}]"

# Non-root, with caches in writable scratch space (the root filesystem may be read-only in the pod).
RUN useradd --uid 1000 --create-home runner
USER 1000
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/hf-home \
    TORCH_EXTENSIONS_DIR=/tmp/torch-extensions \
    TRITON_CACHE_DIR=/tmp/triton
WORKDIR /home/runner

EXPOSE 9400
ENTRYPOINT ["python", "-m", "llmops_runners.finetune"]
CMD ["--config", "/etc/llmops/config.json"]
