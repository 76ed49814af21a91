"""SweepService: a sweep as a gRPC job gives the tornado `hashpivot sweep` gives; bad inputs name the field."""

import grpc
import pytest
import yaml

from optimizer.fleet import parse_fleet
from protos.hashpivot.v1 import sweep_service_pb2 as pb
from protos.hashpivot.v1 import sweep_service_pb2_grpc
from services import convert
from services.cli import main
from tests.services.grpc_harness import ServerThread, rich_details
from tests.services.test_sweep import DAYS, RACKS, linear_fleet


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("sweep") / "hashpivot.sqlite") as srv:
        yield srv


def _request(*inputs, grid=False):
    request = pb.SubmitSweepRequest(fleet=convert.fleet_to_message(parse_fleet(linear_fleet())), grid=grid)
    for key, values in inputs:
        request.inputs.append(pb.SweepInput(key=key, values=values))
    return request


def test_sweep_job_tornado_over_grpc(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = sweep_service_pb2_grpc.SweepServiceStub(channel)
        submitted = stub.SubmitSweep(_request(("power.fx", [30, 60]), ("hashprice", [25, 50])), timeout=30).sweep
        assert submitted.points_total == 5 and submitted.state == pb.SWEEP_STATE_RUNNING
        updates = list(stub.WatchSweep(pb.WatchSweepRequest(sweep_id=submitted.sweep_id), timeout=120))
        done = updates[-1].sweep
        assert done.state == pb.SWEEP_STATE_SUCCEEDED and done.points_done == 5
        assert [b.key for b in done.tornado] == ["hashprice", "power.fx"]
        assert done.tornado[0].swing == pytest.approx(RACKS * DAYS * 1.96 * 25, rel=1e-9)
        assert done.tornado[1].swing == pytest.approx(RACKS * DAYS * 0.882 * 30, rel=1e-9)
        assert [p.varied for p in done.points] == ["base", "power.fx", "power.fx", "hashprice", "hashprice"]
        assert done.points[0].site_modes["fx"] == "mine"
        got = stub.GetSweep(pb.GetSweepRequest(sweep_id=submitted.sweep_id), timeout=10).sweep
        assert got == done

        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitSweep(_request(("hashprice", [-5, 30])), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, description)] = rich_details(err.value)["fields"]
        assert field == "inputs[0]" and "bitcoin.hashprice_usd_per_ph_day" in description
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSweep(pb.GetSweepRequest(sweep_id="sweep-nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_sweep_command(server, tmp_path, capsys):
    fleet = tmp_path / "linear.yaml"
    fleet.write_text(yaml.safe_dump(linear_fleet()))
    args = ["client", "sweep", str(fleet), "--vary", "hashprice=25,50", "--target", server.target, "--format", "csv"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "input,low,high,at_low,at_high,swing"
    assert lines[1].startswith("hashprice,25.0,50.0,")
