"""The compiled Dispatch load generator (bench/loadgen.py, bench/loadgen/dispatch_load.cc) against a small
in-process gRPC server that records what arrives: the calls counted are the calls made, each client has its
own connection, the open loop keeps its schedule and times calls from when they were due, and a failed call
fails the run. Skipped where gRPC's C++ library is not installed (the bench then uses its Python clients)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

from tests.fleets import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import loadgen  # noqa: E402

METHOD = "/test.Load/Call"
TOKEN = ("authorization", "Bearer t")
STALL_S = 0.3
MESSAGES = [f"message {k}".encode() for k in range(10)]


@pytest.fixture(scope="module")
def built():
    try:
        return loadgen.binary()
    except loadgen.Unavailable as exc:
        pytest.skip(f"the C++ load generator cannot be built on this machine (bench only, not CI): {exc}")


class Recorder:
    """Replies with the request; refuses a call without the token; fails `failing` with UNAVAILABLE; stalls
    the `stall_at`-th call (counted from 1) by STALL_S."""

    def __init__(self, failing: bytes | None = None, stall_at: int | None = None):
        self.failing, self.stall_at = failing, stall_at
        self.requests: list[bytes] = []
        self.peers: set[str] = set()
        self.lock = threading.Lock()

    def call(self, request: bytes, context) -> bytes:
        if TOKEN not in tuple(context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
        with self.lock:
            self.requests.append(request)
            self.peers.add(context.peer())
            count = len(self.requests)
        if count == self.stall_at:
            time.sleep(STALL_S)
        if request == self.failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        return request


def serve(recorder: Recorder):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_unary_rpc_method_handler(recorder.call)  # bytes in, bytes out: no (de)serializers
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Load", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def run(recorder: Recorder, clients: int, seconds: float, rate: float | None = None) -> loadgen.Measured:
    server, target = serve(recorder)
    try:
        return loadgen.run(target, METHOD, MESSAGES, (TOKEN,), clients, seconds, rate)
    finally:
        server.stop(None)


def test_closed_loop_counts_every_call_each_client_on_its_own_connection(built):
    recorder = Recorder()
    measured = run(recorder, clients=3, seconds=1.0)
    # The server saw each client's connecting call and then exactly the calls measured.
    assert len(recorder.requests) == 3 + len(measured.latencies_s)
    assert measured.rate == pytest.approx(len(measured.latencies_s) / 1.0)
    assert len(recorder.peers) == 3  # three connections (three client ports), not one shared
    # Round-robin from client i's message 7 i (mod 10): each client's first call, the connecting one.
    assert sorted(recorder.requests[:3]) == sorted(MESSAGES[k] for k in (0, 7, 4))
    assert set(recorder.requests) == set(MESSAGES)
    assert measured.generator == "C++" and measured.client_cpu_s > 0


def test_open_loop_keeps_its_schedule_and_times_calls_from_when_they_were_due(built):
    clients, seconds, rate = 4, 1.0, 200.0
    # A call of the measured window stalls: that client's calls due meanwhile go out late, one at a time.
    recorder = Recorder(stall_at=clients + 20)
    measured = run(recorder, clients, seconds, rate)
    per_client = int(seconds * rate / clients)  # 50 calls each, every 20 ms
    assert len(measured.latencies_s) == clients * per_client
    # The stalled client sends its overdue calls back to back and catches up: the run keeps the rate.
    assert measured.rate == pytest.approx(rate, rel=0.05)
    # Timed from when each was due, the ~14 calls due during the 300 ms stall all count it, the first
    # nearly whole; timed from when they were sent (coordinated omission) only the stalled call would.
    late = [s for s in measured.latencies_s if s >= 0.1]
    assert len(late) >= 8
    assert max(measured.latencies_s) >= STALL_S


def test_a_failed_call_fails_the_run_naming_its_code(built):
    with pytest.raises(RuntimeError, match=r"Dispatch calls failed under load: [\d,]+ UNAVAILABLE; [\d,]+ returned OK"):
        run(Recorder(failing=MESSAGES[3]), clients=2, seconds=0.5)


def test_a_client_that_cannot_connect_fails_the_run_naming_the_target(built):
    recorder = Recorder()
    server, target = serve(recorder)
    try:
        with pytest.raises(RuntimeError, match=rf"could not connect to {target}: code 16"):  # UNAUTHENTICATED
            loadgen.run(target, METHOD, MESSAGES, (), 2, 0.5)
    finally:
        server.stop(None)


def test_without_grpcs_cpp_library_the_build_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PKG_CONFIG_LIBDIR", str(tmp_path))  # pkg-config finds no grpc++ there
    monkeypatch.setenv("PKG_CONFIG_PATH", str(tmp_path))
    with pytest.raises(loadgen.Unavailable, match=r"apt-get install -y g\+\+ pkg-config libgrpc\+\+-dev"):
        loadgen.binary()
