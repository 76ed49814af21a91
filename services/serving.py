"""What every serving process of hashpivot shares: the main server (services/server.py) and its Dispatch
fronts (services/front.py) take the same TLS files, message limits and garbage-collector settings (the
client, services/client.py, the same message limits)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the largest message either side accepts: a large fleet's plan and its tables
# Python's young generation is collected every GC_GEN0_THRESHOLD net allocations (CPython's default is
# 700: a collection every ~10 Dispatch calls under load). Each costs tens of microseconds at this
# size, so a larger one only spends the same work in fewer, still short, pauses.
GC_GEN0_THRESHOLD = 7_000
MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


class ServerConfigError(ValueError):
    """A setting the server cannot start with (no tokens, unreadable certificate); one line, no traceback."""


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mTLS, clients must present a certificate it signed

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            root = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise ServerConfigError(f"TLS file {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


def freeze_heap() -> None:
    """Move every object alive after start-up out of the collector's sight.

    Why: the server process holds ~170k long-lived objects (Ray, Pyomo, pydantic, grpc modules and
    their caches). A full collection scans them all, 110-130 ms on 2 cores, and every call in flight
    waits for it: it was the max (136 ms) and much of the p99 of 30 Dispatch clients. Frozen objects are
    never scanned again, so a full collection only looks at what was made since; the frozen ones are
    never freed either, which costs nothing since they live as long as the process.
    """
    gc.collect()  # garbage of the start-up is freed, not frozen for good
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
