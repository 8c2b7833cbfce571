# Fine-tuning runner image: `python -m llmops_runners.finetune --config /etc/llmops/config.json`.
#   CPU:  docker build -f images/finetune.Dockerfile -t ghcr.io/llmops-dev/runner-finetune:0.1.0 .
#   GPU:  docker build -f images/finetune.Dockerfile --build-arg EXTRAS=finetune-gpu -t ghcr.io/llmops-dev/runner-finetune-gpu:0.1.0 .
#   here (buildah, Debian base, no registry): llmops-devcluster images build finetune
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module: the public
# python:3.11-slim for Docker, or localhost/llmops/python-base:bookworm (debootstrap) here.
# The PyPI torch wheels carry their CUDA libraries (several GB), so one slim base serves both
# CPU and GPU; the GPU image needs the NVIDIA container runtime on the node.
ARG BASE_IMAGE=python:3.11-slim

# The dependency list, read from pyproject.toml: the heavy layer below is rebuilt when this
# list changes, not on every edit of pyproject.toml.
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=finetune
WORKDIR /src
COPY images/requirements.py pyproject.toml ./
RUN python3 requirements.py pyproject.toml "${EXTRAS}" > requirements.txt

FROM ${BASE_IMAGE}
# g++ stays in the image: DeepSpeed compiles its CPU ops (CPU Adam for optimizer offload,
# shared-memory comm) on first use, against Python.h: python:3.11-slim ships the headers,
# the Debian base gets those of its own python3 from libpython3-dev. Unpinned on purpose:
# the versions are whatever the base's Debian release ships (bookworm or trixie).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && { [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ] \
      || apt-get install -y --no-install-recommends libpython3-dev; } \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv \
 && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin runner

# Dependency layer (torch with its CUDA wheels, transformers, DeepSpeed, ...): several GB,
# changes only with the dependency list; the pip cache mount keeps the wheels across builds.
COPY --from=requirements /src/requirements.txt /opt/venv/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --requirement /opt/venv/requirements.txt

# Code layer: a change in operator/ or runners/ rebuilds only from here (seconds).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runners ./runners
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info operator/*.egg-info runners/*.egg-info

# Non-root, read-only root filesystem friendly: everything the workload writes outside its
# output volume goes under /tmp (HOME, the Hugging Face cache, DeepSpeed's JIT-built ops,
# Triton's kernel cache), so a pod with readOnlyRootFilesystem must mount a writable
# emptyDir at /tmp (and /dev/shm, which the operator's Job mounts already).
USER 1000
WORKDIR /tmp
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/hf-home \
    TORCH_EXTENSIONS_DIR=/tmp/torch-extensions \
    TRITON_CACHE_DIR=/tmp/triton \
    MPLCONFIGDIR=/tmp/matplotlib

EXPOSE 9400
ENTRYPOINT ["python", "-m", "llmops_runners.finetune"]
CMD ["--config", "/etc/llmops/config.json"]
