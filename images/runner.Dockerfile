# The runner images, one per runner family: `python -m llmops_runners.<RUNNER> --config /etc/llmops/config.json`.
#   fine-tuning:  docker build -f images/runner.Dockerfile -t ghcr.io/llmops-dev/runner-finetune:0.1.0 .
#     (GPU)       docker build -f images/runner.Dockerfile --build-arg EXTRAS=finetune-gpu -t ghcr.io/llmops-dev/runner-finetune-gpu:0.1.0 .
#   compression:  docker build -f images/runner.Dockerfile --build-arg EXTRAS=compress --build-arg RUNNER=compress -t ghcr.io/llmops-dev/runner-compress:0.1.0 .
#   (ONNX INT8)   docker build -f images/runner.Dockerfile --build-arg EXTRAS=compress-onnx --build-arg RUNNER=compress -t ghcr.io/llmops-dev/runner-compress-onnx:0.1.0 .
#   CPU serving:  docker build -f images/runner.Dockerfile --build-arg EXTRAS=serve --build-arg RUNNER=serve -t ghcr.io/llmops-dev/runner-serve:0.1.0 .
#   here (buildah, Debian base, no registry): llmops-devcluster images build finetune compress compress-onnx serve
# The families cannot share one environment (llm-compressor and optimum-onnx pin different
# transformers), but they share everything below their own dependency layer: the base, g++,
# and torch with its CUDA wheels (several GB), pinned once by the `runner-torch` extra.
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module: the public
# python:3.11-slim for Docker, or localhost/llmops/python-base:bookworm (debootstrap) here.
# The PyPI torch wheels carry their CUDA libraries (several GB), so one slim base serves both
# CPU and GPU; the GPU image needs the NVIDIA container runtime on the node.
ARG BASE_IMAGE=python:3.11-slim

# The dependency lists, read from pyproject.toml: the heavy layers below are rebuilt when a
# list changes, not on every edit of pyproject.toml (COPY --from keys on the file's content).
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=finetune
WORKDIR /src
COPY images/requirements.py pyproject.toml ./
RUN python3 requirements.py pyproject.toml runner-torch > torch.txt \
 && python3 requirements.py pyproject.toml "${EXTRAS}" > requirements.txt

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

# The shared layer: torch with its CUDA wheels, several GB, the same in every runner image.
COPY --from=requirements /src/torch.txt /opt/venv/torch.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --requirement /opt/venv/torch.txt

# The family's layer (transformers, peft, DeepSpeed or llm-compressor or optimum-onnx, ...): the
# torch above satisfies every family's range, so pip keeps it.
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
ARG RUNNER=finetune
ENV LLMOPS_RUNNER=llmops_runners.${RUNNER}
# The operator's pods name the module themselves (command: python -m ...); this is for `docker run`.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"$LLMOPS_RUNNER\" \"$@\"", "runner"]
CMD ["--config", "/etc/llmops/config.json"]
