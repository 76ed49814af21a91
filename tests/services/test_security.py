"""Identity and transport: tokens, roles, tenants, TLS and mTLS, loopback binds (issue 12, item 1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.hashpivot.v1 import jobs_pb2, planner_service_pb2_grpc
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services.auth import Role, TokenFileError, hash_token, load_tokens, parse_token_lines, token_line
from services.client import PlannerClient, PlannerError, TlsConfig
from services.server import ServerConfig
from services.serving import ServerConfigError, TlsFiles
from tests.conftest import small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message

TOKENS = {  # token -> (caller, role, tenant)
    "alice-secret": ("alice", Role.PLANNER, "acme"),
    "reader-secret": ("rita", Role.READER, "acme"),
    "robot-secret": ("robot", Role.AUTOMATION, "acme"),
    "bob-secret": ("bob", Role.PLANNER, "globex"),
    "admin-secret": ("root", Role.ADMIN, "ops"),
}
FINAL = {jobs_pb2.PLAN_JOB_STATE_SUCCEEDED, jobs_pb2.PLAN_JOB_STATE_FAILED, jobs_pb2.PLAN_JOB_STATE_CANCELLED}


def token_config(dispatch_fronts: int = 0) -> ServerConfig:
    lines = [token_line(token, *entry) for token, entry in TOKENS.items()]
    return ServerConfig(tokens=parse_token_lines(lines, "test"), dispatch_fronts=dispatch_fronts)


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def rpc_code(fn, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code()


# Every test of identity runs against the server alone and through a Dispatch front (services/front.py):
# a front answers Dispatch itself and forwards the rest, and neither may let anything more through.
@pytest.fixture(scope="module", params=[0, 1], ids=["one process", "through a Dispatch front"])
def server(ray_session, tmp_path_factory, request):
    with ServerThread(tmp_path_factory.mktemp("auth") / "db.sqlite", config=token_config(request.param)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = server.channel()
    yield server.stub(channel)
    channel.close()


@pytest.fixture(scope="module")
def alice_job(stub) -> pb.SubmitPlanJobResponse:
    """A finished job (and plan) of tenant acme."""
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data(scenarios=4)), request_id="quarter-1")
    job = stub.SubmitPlanJob(request, metadata=auth("alice-secret"), timeout=30).job
    watch = stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job.job_id), metadata=auth("alice-secret"), timeout=120)
    final = [e.job for e in watch][-1]
    assert final.state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    return final


def test_no_token_or_a_wrong_one_is_refused_but_health_needs_none(server, stub):
    request = pb.ListPlanJobsRequest()
    assert rpc_code(stub.ListPlanJobs, request, timeout=10) is grpc.StatusCode.UNAUTHENTICATED
    assert rpc_code(stub.ListPlanJobs, request, metadata=auth("guess"), timeout=10) is grpc.StatusCode.UNAUTHENTICATED
    basic = (("authorization", "Basic YWxpY2U6c2VjcmV0"),)
    assert rpc_code(stub.ListPlanJobs, request, metadata=basic, timeout=10) is grpc.StatusCode.UNAUTHENTICATED
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_reader_reads_but_cannot_cancel_submit_or_delete(stub, alice_job):
    reader = auth("reader-secret")
    got = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=alice_job.job_id), metadata=reader, timeout=10)
    assert got.job.job_id == alice_job.job_id and got.plan.plan_id == alice_job.plan_id  # same tenant
    cancel = pb.CancelPlanJobRequest(job_id=alice_job.job_id)
    assert rpc_code(stub.CancelPlanJob, cancel, metadata=reader, timeout=10) is grpc.StatusCode.PERMISSION_DENIED
    submit = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data()))
    assert rpc_code(stub.SubmitPlanJob, submit, metadata=reader, timeout=10) is grpc.StatusCode.PERMISSION_DENIED
    delete = pb.DeletePlanRequest(plan_id=alice_job.plan_id)
    assert rpc_code(stub.DeletePlan, delete, metadata=reader, timeout=10) is grpc.StatusCode.PERMISSION_DENIED


def test_a_planner_cannot_see_another_tenants_jobs_or_plans(stub, alice_job):
    bob = auth("bob-secret")
    job_id, plan_id = alice_job.job_id, alice_job.plan_id
    for call, request in (
        (stub.GetPlanJob, pb.GetPlanJobRequest(job_id=job_id)),
        (stub.CancelPlanJob, pb.CancelPlanJobRequest(job_id=job_id)),
        (stub.DeletePlanJob, pb.DeletePlanJobRequest(job_id=job_id)),
        (stub.GetPlan, pb.GetPlanRequest(plan_id=plan_id)),
        (stub.DeletePlan, pb.DeletePlanRequest(plan_id=plan_id)),
        (stub.Evaluate, pb.EvaluateRequest(plan_id=plan_id)),
    ):
        assert rpc_code(call, request, metadata=bob, timeout=10) is grpc.StatusCode.NOT_FOUND, call
    watch = stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job_id), metadata=bob, timeout=10)
    assert rpc_code(list, watch) is grpc.StatusCode.NOT_FOUND
    listed = stub.ListPlanJobs(pb.ListPlanJobsRequest(page_size=100), metadata=bob, timeout=10).jobs
    assert job_id not in {j.job_id for j in listed}
    plans = stub.ListPlans(pb.ListPlansRequest(page_size=100), metadata=bob, timeout=10).plans
    assert plan_id not in {p.plan_id for p in plans}
    # The admin sees every tenant's; alice's own listing has it.
    admin = auth("admin-secret")
    assert stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job_id), metadata=admin, timeout=10).job.job_id == job_id
    mine = stub.ListPlans(pb.ListPlansRequest(), metadata=auth("alice-secret"), timeout=10).plans
    assert plan_id in {p.plan_id for p in mine}


def test_request_ids_are_scoped_to_the_tenant(stub, alice_job):
    request = pb.SubmitPlanJobRequest(fleet=fleet_message(small_fleet_data(scenarios=4)), request_id="quarter-1")
    again = stub.SubmitPlanJob(request, metadata=auth("alice-secret"), timeout=30).job
    assert again.job_id == alice_job.job_id  # idempotent for its own tenant
    bobs = stub.SubmitPlanJob(request, metadata=auth("bob-secret"), timeout=30).job
    assert bobs.job_id != alice_job.job_id  # never someone else's job
    stub.CancelPlanJob(pb.CancelPlanJobRequest(job_id=bobs.job_id), metadata=auth("bob-secret"), timeout=60)


def test_automation_dispatches_its_tenants_plans_only(stub, alice_job):
    robot = auth("robot-secret")
    request = pb.DispatchRequest(
        plan_id=alice_job.plan_id, power_price_usd_per_mwh_by_site={"spot": 30}, hashprice_usd_per_ph_day=35
    )
    assert stub.Dispatch(request, metadata=robot, timeout=10).plan_id == alice_job.plan_id
    assert rpc_code(stub.Dispatch, request, metadata=auth("bob-secret"), timeout=10) is grpc.StatusCode.NOT_FOUND
    listing = pb.ListPlanJobsRequest()
    assert rpc_code(stub.ListPlanJobs, listing, metadata=robot, timeout=10) is grpc.StatusCode.PERMISSION_DENIED


def test_planner_client_sends_the_token(server, alice_job):
    with PlannerClient(server.target, timeout_s=10, token="alice-secret") as client:
        assert alice_job.job_id in {j.job_id for j in client.list_jobs()}
    with PlannerClient(server.target, timeout_s=10, token="") as client, pytest.raises(PlannerError) as err:
        list(client.list_jobs())
    assert err.value.code is grpc.StatusCode.UNAUTHENTICATED


# configuration ----------------------------------------------------------------------------------


def test_a_server_without_tokens_refuses_to_start_unless_insecure(caplog):
    with pytest.raises(ServerConfigError, match="no tokens"):
        ServerConfig().authenticator()
    assert ServerConfig(insecure=True).authenticator().insecure
    assert "INSECURE" in caplog.text


def test_token_files_hold_hashes_never_tokens(tmp_path, monkeypatch):
    path = tmp_path / "tokens.txt"
    path.write_text(f"# team\n{token_line('s3cret', 'alice', Role.PLANNER)}\n")
    monkeypatch.setenv("HASHPIVOT_TOKENS", token_line("r0bot", "robot", Role.AUTOMATION, "alice"))
    callers = load_tokens(path)
    assert callers[hash_token("s3cret")].tenant == "alice" and callers[hash_token("r0bot")].role is Role.AUTOMATION
    assert "s3cret" not in path.read_text()
    with pytest.raises(TokenFileError, match="line 1"):
        parse_token_lines(["s3cret alice planner"], "tokens.txt")  # a plain token is refused
    with pytest.raises(TokenFileError, match="role"):
        parse_token_lines([f"sha256:{hash_token('x')} alice superuser"], "tokens.txt")


# TLS ----------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


@pytest.mark.parametrize("fronts", [0, 1], ids=["one process", "through a Dispatch front"])
def test_tls_refuses_plain_tcp_and_mtls_refuses_clients_without_a_certificate(ray_session, pki, tmp_path, fronts):
    config = token_config(fronts)
    config.tls = TlsFiles(pki / "server.pem", pki / "server.key", client_ca=pki / "ca.pem")
    with ServerThread(tmp_path / "db.sqlite", config=config) as server:
        with grpc.insecure_channel(server.target) as plain:
            stub = planner_service_pb2_grpc.PlannerServiceStub(plain)
            code = rpc_code(stub.ListPlanJobs, pb.ListPlanJobsRequest(), metadata=auth("alice-secret"), timeout=5)
        assert code is grpc.StatusCode.UNAVAILABLE  # no TLS handshake, no call
        no_cert = TlsConfig(ca=pki / "ca.pem")
        with PlannerClient(server.target, timeout_s=5, token="alice-secret", tls=no_cert) as client:
            with pytest.raises(PlannerError) as err:
                list(client.list_jobs())
        assert err.value.code is grpc.StatusCode.UNAVAILABLE  # the server wants a client certificate
        mutual = TlsConfig(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        with PlannerClient(server.target, timeout_s=10, token="alice-secret", tls=mutual) as client:
            assert list(client.list_jobs()) == []
            assert client.health() == "SERVING"
        with PlannerClient(server.target, timeout_s=10, token="", tls=mutual) as client:
            with pytest.raises(PlannerError) as err:  # a certificate is not a token
                list(client.list_jobs())
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED


# loopback ---------------------------------------------------------------------------------------


def _listening(pids: set[int]) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[3] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)]


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        out = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True).stdout
        children = {int(p) for p in out.split()}
        frontier += list(children - found)
        found |= children
    return found


@pytest.mark.skipif(subprocess.run(["which", "ss"], capture_output=True).returncode != 0, reason="needs ss")
def test_embedded_ray_and_the_default_server_listen_on_loopback_only(server):
    addresses = _listening(_descendants(os.getpid()) | {os.getpid()})
    assert len(addresses) >= 3  # GCS, raylet, object manager, workers ... and the gRPC server
    hosts = {address.rsplit(":", 1)[0] for address in addresses}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, hosts
    assert ServerConfig().host == "127.0.0.1"


def test_the_interceptor_reuses_one_handler_per_method_and_caller_yet_identifies_each_call():
    """Handlers are cached per (method, caller): each call still runs as its own caller, with its own request id."""
    import asyncio

    from services import logs
    from services.auth import Authenticator, AuthInterceptor, current_caller

    callers = parse_token_lines([token_line("ta", "alice", Role.PLANNER), token_line("tb", "bob", Role.READER)], "t")
    interceptor = AuthInterceptor(Authenticator(callers))

    async def behavior(request, context):
        return current_caller().name, logs.fields()["request_id"]

    inner = grpc.unary_unary_rpc_method_handler(behavior)

    class Details:
        def __init__(self, token: str):
            self.method = "/hashpivot.v1.PlannerService/GetPlan"
            self.invocation_metadata = (("authorization", f"Bearer {token}"),)

    class Context:
        def __init__(self, request_id: str | None = None):
            self.metadata = (("x-request-id", request_id),) if request_id else ()

        def invocation_metadata(self):
            return self.metadata

    async def call(token: str, request_id: str | None = None):
        async def continuation(_details):
            return inner

        handler = await interceptor.intercept_service(continuation, Details(token))
        # each call in its own context, as grpc.aio runs each in its own task
        return handler, await asyncio.create_task(handler.unary_unary(None, Context(request_id)))

    async def calls():
        return [await call("ta"), await call("ta"), await call("tb"), await call("ta", "req-42")]

    (h1, (who1, id1)), (h2, (who2, id2)), (h3, (who3, _)), (_, (who4, id4)) = asyncio.run(calls())
    assert h1 is h2 and h3 is not h1
    assert (who1, who2, who3, who4) == ("alice", "alice", "bob", "alice")
    assert id1 != id2 and id4 == "req-42"
