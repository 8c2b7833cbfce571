# The operator image: kopf, kubernetes, pydantic, prometheus-client. No ML stack.
#   docker build -f images/operator.Dockerfile -t ghcr.io/llmops-dev/operator:0.1.0 .
#   here (buildah, Debian base, no registry): llmops-devcluster images build operator
# BASE_IMAGE is any Debian-like image with python3 >= 3.11 and its venv module: the public
# python:3.11-slim for Docker, or localhost/llmops/python-base:bookworm (debootstrap) here.
ARG BASE_IMAGE=python:3.11-slim

# The dependency list, read from pyproject.toml: the dependency layer below is rebuilt when
# this list changes, not on every edit of pyproject.toml.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY images/requirements.py pyproject.toml ./
RUN python3 requirements.py pyproject.toml "" > requirements.txt

FROM ${BASE_IMAGE}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root; HOME is /tmp because the root filesystem is read-only in the chart's pod. The
# operator writes nothing on disk (no writable path needed).
RUN python3 -m venv /opt/venv \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin llmops

# Dependency layer: changes only with the dependency list.
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

USER 10001
WORKDIR /tmp
ENV HOME=/tmp
EXPOSE 8000 8080
ENTRYPOINT ["llmops-operator"]
