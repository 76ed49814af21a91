# hashpivot gRPC planning service.
#
#   docker build -t hashpivot .
#   hashpivot token --caller alice --role planner >> tokens.txt     # once per caller; keep the printed token
#   docker run -p 50051:50051 --shm-size=2g -v hashpivot-data:/data \
#       -v $PWD/tokens.txt:/run/secrets/hashpivot-tokens:ro hashpivot
#
# The container binds 0.0.0.0 (the port is published) and requires bearer tokens: it will not start
# without the tokens file /run/secrets/hashpivot-tokens (a Docker or Kubernetes secret). For TLS,
# mount a certificate and key and add `--tls-cert /run/secrets/tls.pem --tls-key /run/secrets/tls.key`
# (and `--client-ca` for mTLS) to the command; otherwise terminate TLS in front of it (docs/operations.md).
#
# Ray keeps its object store in /dev/shm: give the container a few GB (--shm-size), or Ray falls
# back to /tmp and is slower. Set RAY_ADDRESS to join an existing Ray cluster instead of starting an
# embedded one. Jobs and plans live in the SQLite file $HASHPIVOT_DB on the /data volume, so a new
# container on the same volume resumes queued jobs and serves stored plans.

ARG PYTHON_VERSION=3.11

# --- build: install the package and its dependencies into a self-contained virtualenv ---------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY optimizer/ optimizer/
COPY solvers/ solvers/
COPY services/ services/
COPY protos/ protos/
RUN pip install --no-cache-dir .

# --- runtime: the virtualenv only, run as an unprivileged user ------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 hashpivot \
    && useradd --system --uid 10001 --gid hashpivot --no-create-home --shell /usr/sbin/nologin hashpivot \
    && mkdir /data \
    && chown hashpivot:hashpivot /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HASHPIVOT_PORT=50051 \
    HASHPIVOT_DB=/data/hashpivot.sqlite \
    NUMBA_CACHE_DIR=/data/numba-cache
# NUMBA_CACHE_DIR: the economics kernel's machine code (optimizer/economics_kernel.py) is cached where the
# service user may write; the venv is root's.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE ${HASHPIVOT_PORT}
# Standard gRPC health check (grpc.health.v1) on $HASHPIVOT_PORT; imports grpc only, so it is cheap.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["python", "-m", "services.healthcheck"]
# Serves on $HASHPIVOT_PORT. SIGTERM (docker stop) drains in-flight calls for up to --grace seconds
# and re-queues running jobs; 8 s fits docker's default 10 s before SIGKILL (raise both together).
STOPSIGNAL SIGTERM
# 0.0.0.0 explicitly: inside a container, loopback is unreachable from the published port. Tokens are
# required (a missing file stops the start with one line). The embedded Ray still binds loopback.
CMD ["hashpivot", "serve", "--host", "0.0.0.0", "--tokens-file", "/run/secrets/hashpivot-tokens", \
     "--grace", "8", "--log-format", "json"]
