# CPU image: ONNX Runtime's CPU execution provider on a slim Python base (Dockerfile.gpu is the CUDA one).
#   docker build -t inference-server:cpu .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" inference-server:cpu
# Ports: 8000 HTTP/REST, 8001 gRPC, 8002 Prometheus metrics. Models: a Triton-style repository mounted at /models,
# or pulled from an MLflow registry at start (build with EXTRAS=cpu,tracing,mlflow and pass --config with the sources).
# Arguments replace the whole CMD, so repeat --host 0.0.0.0 --metrics-host 0.0.0.0 when giving your own.
# SIGTERM drains for up to drain_grace_s (30 s unless the config or --drain-grace-s says otherwise), then keeps
# refusing for up to 2 s before it closes its ports: give `docker stop -t 40`. In Kubernetes the grace must cover
# the preStop sleep + drain_grace_s + 2 s: k8s/ sets drain_grace_s = 15 and terminationGracePeriodSeconds 25.
# Read-only root filesystem: the server writes only to /tmp and /var/cache/inference-server (the model cache);
# both are VOLUMEs here, and in Kubernetes mount an emptyDir on each.

# Both stages use this base, so the venv's interpreter (/usr/local/bin/python3.12) is the same file in both.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE} AS build
# The project's extras: `cpu,tracing` by default (tracing: OpenTelemetry's SDK and OTLP exporters, off until an
# OTEL_EXPORTER_OTLP_* endpoint is set); `cpu,tracing,mlflow` adds the MLflow registry client. Never `gpu` as well:
# both ONNX Runtime wheels install the same package (the check below fails).
ARG EXTRAS=cpu,tracing
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY inference_server ./inference_server
# Install the extras at the versions of the image's lock (requirements/cpu.txt, written by scripts/lock.py), then
# fail the build unless exactly one ONNX Runtime, the CPU one, is installed.
RUN /opt/venv/bin/pip install --no-cache-dir --constraint=requirements/cpu.txt ".[${EXTRAS}]" \
    && /opt/venv/bin/python -c "import importlib.metadata as md, onnxruntime as ort; \
names = {(d.metadata['Name'] or '').lower().replace('_', '-') for d in md.distributions()}; \
assert 'onnxruntime-gpu' not in names, 'onnxruntime-gpu is installed beside the CPU onnxruntime'; \
assert md.version('onnxruntime') == ort.__version__, (md.version('onnxruntime'), ort.__version__); \
providers = ort.get_available_providers(); \
assert 'CPUExecutionProvider' in providers, providers; \
print('onnxruntime', ort.__version__, providers)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="inference_server (CPU)" \
      org.opencontainers.image.description="KServe v2 / Triton-protocol inference server on ONNX Runtime" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 inference \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin inference \
    && mkdir -p /models /var/cache/inference-server \
    && chown 10001:10001 /var/cache/inference-server
COPY --from=build /opt/venv /opt/venv
# HOME=/tmp: anything that writes under $HOME lands on the writable /tmp. No telemetry from ONNX Runtime or MLflow.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true
VOLUME ["/tmp", "/var/cache/inference-server"]
# Root-owned and read-only: `python -m` puts the working directory first on sys.path.
WORKDIR /
USER 10001:10001
EXPOSE 8000 8001 8002
# The gRPC health service on the server's port (not SERVING until the models have loaded, and again while
# draining). A server with TLS needs --tls-ca (and the name its certificate carries, --tls-server-name) here.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "inference_server.grpc.healthcheck", "--port", "8001", "--timeout-s", "3"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "inference_server"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--model-repository", "/models", \
     "--model-cache-dir", "/var/cache/inference-server"]
