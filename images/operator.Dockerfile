# The operator image: kopf, kubernetes, pydantic, prometheus-client. No ML stack.
#   docker build -f images/operator.Dockerfile -t ghcr.io/llmops-dev/operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runners ./runners
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels "kopf>=1.45,<2" "kubernetes>=33" "pydantic>=2.7,<3" "prometheus-client>=0.20" "PyYAML>=6"

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home llmops
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels llmops && rm -rf /wheels
USER 10001
EXPOSE 8000 8080
ENTRYPOINT ["llmops-operator"]
