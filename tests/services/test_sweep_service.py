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


def test_client_formats_never_cut_ids(server, tmp_path, capsys):
    import csv
    import io
    import json

    from tests.conftest import small_fleet_data

    data = small_fleet_data()
    long_ids = {g["id"]: f"{g['id']}-north-dakota-hall-b-row-17" for g in data["rack_groups"]}
    for group in data["rack_groups"]:
        group["id"] = long_ids[group["id"]]
    fleet = tmp_path / "long.yaml"
    fleet.write_text(yaml.safe_dump(data))
    target = ["--target", server.target, "--timeout", "120"]
    assert main(["client", "optimize", str(fleet), "--scenarios", "4", *target, "--format", "json"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    plan_id = captured.err.strip().splitlines()[-1].split()[-1]
    assert [g["group"] for g in plan["allocation"]] == list(long_ids.values())

    assert (
        main(["client", "dispatch", plan_id, "--price", "spot=25", "--price", "fixed=30", "--hashprice", "40", *target])
        == 0
    )
    table = capsys.readouterr().out
    mining = [g["group"] for g in plan["allocation"] if g["racks_mine"]]  # dispatch lists the groups that mine
    assert mining and all(gid in table for gid in mining) and "…" not in table, table  # piped: never cut
    assert (
        main(
            [
                "client",
                "dispatch",
                plan_id,
                "--price",
                "spot=25",
                "--price",
                "fixed=30",
                "--hashprice",
                "40",
                *target,
                "--format",
                "csv",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["group"] for r in rows] == mining
    assert main(["client", "evaluate", "--plan-id", plan_id, "--scenarios", "3", *target, "--format", "csv"]) == 0
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(row["mean"]) == pytest.approx(float(row["mean"])) and "CVaR" in row
    assert main(["client", "list", *target, "--format", "json"]) == 0
    assert all(len(j["job_id"]) > 8 for j in json.loads(capsys.readouterr().out))
