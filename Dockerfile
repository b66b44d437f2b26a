# The DICOM AI sidecar: CPU torch and the package, run as a non-root user.
# Build: docker build -t dicom-ai-sidecar .   (docker-compose.yml builds it for you)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The CPU build of torch first, from the PyTorch CPU index (the default index brings CUDA, several GB).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY models ./models
COPY train ./train
COPY conf ./conf
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin sidecar \
    && mkdir -p /data /run/secrets \
    && chown sidecar /data

# Listen on every interface inside the container; the compose file decides what the host publishes.
ENV SIDECAR_BIND_HOST=0.0.0.0 \
    SIDECAR_DATA_DIR=/data \
    SIDECAR_LOG_FORMAT=json

USER sidecar
VOLUME ["/data"]
# 11112: DICOM (plain or TLS, as configured); 8080: health, metrics and dashboard when web_port is set.
EXPOSE 11112 8080

# Alive = the DICOM port accepts connections (works with TLS and with an allow-list in force).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('SIDECAR_PORT', '11112'))), 3).close()"]

CMD ["sidecar", "serve", "--config", "/app/conf"]
