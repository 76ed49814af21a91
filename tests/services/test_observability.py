"""Prometheus metrics count calls by method and code; log lines carry the request and job they belong to."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.request

import grpc
import pytest

from protos.hashpivot.v1 import planner_service_pb2 as pb
from services import logs
from services.auth import Role, parse_token_lines, token_line
from services.server import ServerConfig
from tests.services.grpc_harness import ServerThread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (labels in any order); 0 when absent."""
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        found = dict(pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if pair)
        if sample == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


def test_metrics_count_calls_by_method_and_code(ray_session, tmp_path):
    port = free_port()
    config = ServerConfig(tokens=parse_token_lines([token_line("t", "alice", Role.READER)], "test"), metrics_port=port)
    with ServerThread(tmp_path / "db.sqlite", config=config) as server, server.channel() as channel:
        stub = server.stub(channel)
        url = f"http://127.0.0.1:{port}/metrics"
        before = urllib.request.urlopen(url, timeout=10).read().decode()
        for _ in range(3):
            stub.ListPlanJobs(pb.ListPlanJobsRequest(), metadata=(("authorization", "Bearer t"),), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.ListPlanJobs(pb.ListPlanJobsRequest(), timeout=10)  # no token
        with pytest.raises(grpc.RpcError):  # a reader may not submit
            stub.SubmitPlanJob(pb.SubmitPlanJobRequest(), metadata=(("authorization", "Bearer t"),), timeout=10)
        # the interceptor counts a call once its reply is sent, which can be just after the client has it
        deadline = time.monotonic() + 10
        while True:
            after = urllib.request.urlopen(url, timeout=10).read().decode()
            done = metric(after, "hashpivot_rpc_total", method="SubmitPlanJob", code="PERMISSION_DENIED")
            if done > metric(before, "hashpivot_rpc_total", method="SubmitPlanJob", code="PERMISSION_DENIED"):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)

    def delta(**labels: str) -> float:
        return metric(after, "hashpivot_rpc_total", **labels) - metric(before, "hashpivot_rpc_total", **labels)

    assert delta(method="ListPlanJobs", code="OK") == 3
    assert delta(method="ListPlanJobs", code="UNAUTHENTICATED") == 1
    assert delta(method="SubmitPlanJob", code="PERMISSION_DENIED") == 1
    assert metric(after, "hashpivot_store_writable") == 1
    assert "hashpivot_rpc_seconds_bucket" in after and "hashpivot_queue_depth" in after


def test_json_log_lines_carry_the_bound_fields():
    logger = logging.getLogger("hashpivot.test")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "job %s stopped", ("job-1",), None)

    async def in_a_call():
        logs.bind(rpc="Optimize", caller="alice", request_id="req-7")
        logs._ContextFilter().filter(record)

    import asyncio

    asyncio.run(in_a_call())
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "job job-1 stopped" and line["level"] == "WARNING"
    assert (line["rpc"], line["caller"], line["request_id"]) == ("Optimize", "alice", "req-7")
    assert logs.fields() == {}  # bound inside that task only: nothing leaks to other calls
    text = logs.TextFormatter("%(message)s").format(record)
    assert text.endswith("rpc=Optimize caller=alice request_id=req-7")
