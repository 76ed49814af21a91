"""Standard gRPC health probe, light enough for a container HEALTHCHECK (imports grpc only).

    python -m services.healthcheck [HOST:PORT] [SERVICE]   # exit 0 when SERVING

Target default: $HASHPIVOT_TARGET, else localhost:$HASHPIVOT_PORT (default 50051). Health needs no
token; against a TLS server set $HASHPIVOT_TLS_CA (and $HASHPIVOT_CLIENT_CERT/_KEY for mTLS).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def default_target() -> str:
    return os.environ.get("HASHPIVOT_TARGET") or f"localhost:{os.environ.get('HASHPIVOT_PORT', '50051')}"


def _channel(target: str) -> grpc.Channel:
    files = [os.environ.get(n) for n in ("HASHPIVOT_TLS_CA", "HASHPIVOT_CLIENT_KEY", "HASHPIVOT_CLIENT_CERT")]
    if not any(files):
        return grpc.insecure_channel(target)
    ca, key, cert = (open(f, "rb").read() if f else None for f in files)  # noqa: SIM115 - read once, tiny files
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, cert))


def check(target: str | None = None, service: str = "", timeout_s: float = 5.0) -> str:
    """SERVING, NOT_SERVING, ...; or the status code name when the server cannot be reached."""
    with _channel(target or default_target()) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str]) -> int:
    status = check(argv[0] if argv else None, argv[1] if len(argv) > 1 else "")
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
