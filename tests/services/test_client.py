"""The Python client API and `hashpivot client ...` against a real server on a loopback port."""

import csv
import io
import json

import grpc
import pytest
import yaml
from google.protobuf import json_format

from optimizer.allocation import Mode
from optimizer.fleet import load_fleet
from protos.hashpivot.v1 import jobs_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services import convert, healthcheck
from services.cli import main
from services.client import PlannerClient, PlannerError
from solvers.diagnose import Commitments
from tests.fleets import million_rack_fleet_data, small_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("client") / "hashpivot.sqlite") as srv:
        yield srv


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "small.yaml"
    path.write_text(yaml.safe_dump(small_fleet_data()))
    return path


@pytest.fixture(scope="module")
def client(server):
    with PlannerClient(server.target, timeout_s=120) as client:
        yield client


def test_python_client_round_trip(client, fleet_file):
    assert client.health() == "SERVING"
    reply = client.optimize(fleet_file)
    assert reply.plan.fleet == "small" and reply.plan_id == reply.message.plan_id
    assert client.get_plan(reply.plan_id).plan == reply.plan
    # Evaluate the plan's allocation passed explicitly (as a PlanResult): same profit as the plan
    evaluation = client.evaluate(fleet=fleet_file, allocation=reply.plan)
    assert evaluation.profit.mean_usd == pytest.approx(reply.plan.profit["mean_usd"], rel=1e-9)
    now = client.dispatch(reply.plan_id, {"spot": 20.0}, hashprice_usd_per_ph_day=50.0)
    assert now.racks_run + now.racks_curtailed == sum(g.racks_mine for g in reply.plan.allocation)

    job = client.submit(fleet_file, request_id="client-test")
    states = [j.state for j in client.watch(job.job_id)]
    assert states[-1] == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    finished, plan = client.get(job.job_id)
    assert plan is not None and plan.plan_id == finished.plan_id
    assert plan.plan.totals() == reply.plan.totals()  # the same fleet plans the same way
    assert job.job_id in {j.job_id for j in client.list_jobs(page_size=1)}


def test_python_client_errors_carry_details(client, fleet_file):
    bad = fleet_message(small_fleet_data())
    bad.rack_groups[2].racks = -3
    with pytest.raises(PlannerError) as err:
        client.optimize(bad)
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert [f for f, _ in err.value.field_violations] == ["fleet.rack_groups[2].racks"]
    data = small_fleet_data()
    data["capital_budget_usd"] = 10_000
    with pytest.raises(PlannerError) as err:
        client.optimize(data, Commitments(convert_sites=("spot",)))
    assert err.value.code.name == "FAILED_PRECONDITION"
    assert [s for s, _ in err.value.constraint_violations] == ["capital_budget", "convert[spot]"]
    with pytest.raises(PlannerError) as err:
        client.cancel("job-missing")
    assert err.value.code.name == "NOT_FOUND"


def test_evaluate_what_if_from_a_plan_result(client, fleet_file):
    """A planner edits a plan (idles one mining rack) and scores it: the profit moves by that rack's value."""
    reply = client.optimize(fleet_file)
    plan = reply.plan
    group = next(g for g in plan.allocation if g.racks_mine > 0)
    edited = plan.model_copy(
        update={
            "allocation": [
                g.model_copy(update={"racks_mine": g.racks_mine - 1, "racks_idle": g.racks_idle + 1})
                if g is group
                else g
                for g in plan.allocation
            ]
        }
    )
    base = client.evaluate(plan_id=reply.plan_id, include_scenario_profits=True)
    what_if = client.evaluate(plan_id=reply.plan_id, allocation=edited, include_scenario_profits=True)
    fleet = small_fleet_data()
    idle_cost = next(g for g in fleet["rack_groups"] if g["id"] == group.group).get("idle_cost_usd_per_rack_day", 0) * 3
    deltas = [b - w for b, w in zip(base.scenario_profits_usd, what_if.scenario_profits_usd, strict=True)]
    # per scenario, the rack's mining value plus the idle cost it now pays; on average, the plan's expected value
    assert sum(deltas) / len(deltas) == pytest.approx(group.expected_mine_value_usd_per_rack + idle_cost, rel=1e-9)


def test_cli_commands(server, fleet_file, tmp_path, capsys):
    target = ["client", "--target", server.target, "--timeout", "120"]
    # the request as JSON for generic tools (grpcurl): it parses back to the same fleet
    assert main([*target, "optimize", str(fleet_file), "--print-request", "--accept-offer", "colo"]) == 0
    request = json_format.Parse(capsys.readouterr().out, pb.OptimizeRequest())
    assert convert.fleet_from_message(request.fleet) == load_fleet(fleet_file)
    assert list(request.commitments.accept_offers) == ["colo"]

    assert main([*target, "health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert healthcheck.main([server.target]) == 0

    assert main([*target, "optimize", str(fleet_file), "--scenarios", "4", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    plan_id = out.strip().splitlines()[-1].split()[-1]
    assert plan_id.startswith("plan-")
    stored = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert stored["scenarios"]["count"] == 4

    assert main([*target, "dispatch", plan_id, "--price", "spot=25", "--hashprice", "40", "--json"]) == 0
    dispatch = json.loads(capsys.readouterr().out)
    assert dispatch["plan_id"] == plan_id and dispatch["hashprice_usd_per_ph_day"] == 40
    network = ["--btc-price", "67800", "--network-hashrate", "900"]
    assert main([*target, "dispatch", plan_id, "--price", "spot=25", *network]) == 0
    assert "dispatch at 34.17 $/PH/day" in capsys.readouterr().out

    assert main([*target, "evaluate", "--plan-id", plan_id, "--stream", "1", "--scenarios", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scenario_count"] == 5

    assert main([*target, "submit", str(fleet_file), "--watch"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    job_id = lines[0].split()[-1]
    assert lines[-1].startswith(f"job {job_id} succeeded plan_id plan-")
    assert main([*target, "get", job_id, "--out", str(tmp_path / "job")]) == 0
    shown = capsys.readouterr().out
    assert '"state": "PLAN_JOB_STATE_SUCCEEDED"' in shown and f'"job_id": "{job_id}"' in shown
    assert (tmp_path / "job" / "plan.json").exists()
    assert main([*target, "list", "--state", "succeeded"]) == 0
    assert job_id in capsys.readouterr().out
    # cancelling a finished job is refused: exit 1, the status on stderr
    assert main([*target, "cancel", job_id]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    assert main([*target, "optimize", str(fleet_file), "--accept-offer", "nope"]) == 1
    assert "commitments.accept_offers[0]" in capsys.readouterr().err


def test_cli_robustness_flags_build_the_request(fleet_file, capsys):
    base = ["client", "--target", "localhost:1"]  # --print-request calls nothing
    assert main([*base, "optimize", str(fleet_file), "--print-request"]) == 0
    assert not json_format.Parse(capsys.readouterr().out, pb.OptimizeRequest()).HasField("robustness")
    flags = ["--robustness", "--oos-scenarios", "30", "--no-sensitivity"]
    assert main([*base, "optimize", str(fleet_file), "--print-request", *flags]) == 0
    robustness = json_format.Parse(capsys.readouterr().out, pb.OptimizeRequest()).robustness
    assert robustness.oos_scenarios == 30 and robustness.HasField("sensitivity") and not robustness.sensitivity
    assert not robustness.HasField("replications")  # left to the server's default, the same as `hashpivot plan`
    assert main([*base, "submit", str(fleet_file), "--print-request", "--replications", "3"]) == 0  # implies it
    robustness = json_format.Parse(capsys.readouterr().out, pb.SubmitPlanJobRequest()).robustness
    assert robustness.replications == 3 and not robustness.HasField("oos_scenarios")


def test_robustness_and_events_through_the_client(server, client, fleet_file, capsys):
    settings = {"oos_scenarios": 10, "replications": 2, "wait_and_see_scenarios": 2, "sensitivity": False}
    reply = client.optimize(fleet_file, robustness=settings)
    assert reply.plan.robustness is not None and reply.plan.robustness.out_of_sample_scenarios == 10
    assert reply.plan.robustness.sensitivity is None and reply.plan.robustness.optimality_gap.replications == 2
    with pytest.raises(ValueError, match="oos"):
        client.optimize(fleet_file, robustness={"oos": 10})  # a typo is caught before the call

    target = ["client", "--target", server.target, "--timeout", "120"]
    flags = ["--robustness", "--oos-scenarios", "10", "--replications", "2", "--wait-and-see", "2", "--no-sensitivity"]
    assert main([*target, "optimize", str(fleet_file), *flags]) == 0
    out = capsys.readouterr().out
    assert "Out of sample: 10 fresh scenarios" in out
    plan_id = out.strip().splitlines()[-1].split()[-1]

    # an event at "spot" that leaves no power, a DR call, and the market's spot for the index site
    dispatch = ["dispatch", plan_id, "--spot", "ercot=25", "--available", "spot=0", "--dr-call", "fixed"]
    assert main([*target, *dispatch, "--hashprice", "40", "--json"]) == 0
    response = json.loads(capsys.readouterr().out)
    spot_groups = [g for g in response["groups"] if g["site"] == "spot"]
    assert spot_groups and all(g["action"] == "RACK_ACTION_CURTAIL" and not g.get("racks_run") for g in spot_groups)
    assert all(g["power_price_usd_per_mwh"] == 27.0 for g in spot_groups)  # spot 25 + the 2 $/MWh adder
    assert [s["site"] for s in response["sites"]] == ["fixed", "spot"]
    assert main([*target, *dispatch, "--hashprice", "40"]) == 0
    assert "site spot: 0.00 MW available" in capsys.readouterr().out


def test_a_million_rack_plan_fits_a_default_client_and_shows_its_ranges(server, tmp_path, capsys):
    """Rack ids travel as ranges: a default 4 MiB client reads the plan; the CLI prints them as ranges."""
    path = tmp_path / "million.yaml"
    path.write_text(yaml.safe_dump(million_rack_fleet_data()))
    target = ["client", "--target", server.target, "--timeout", "120"]
    assert main([*target, "optimize", str(path), "--format", "csv"]) == 0
    printed = capsys.readouterr()
    row = next(csv.DictReader(io.StringIO(printed.out)))
    plan_id = printed.err.strip().splitlines()[-1].split()[-1]
    mine, idle = int(row["racks_mine"]), int(row["racks_idle"])
    assert 0 < mine < 1_000_000 and mine + idle == 1_000_000
    assert row["rack_ids"] == f"mine f-old-00000..f-old-{mine - 1:05d}; idle f-old-{mine:05d}..f-old-999999"
    with grpc.insecure_channel(server.target) as channel:  # default message limits (4 MiB)
        client = PlannerClient(server.target, timeout_s=60, channel=channel)
        reply = client.get_plan(plan_id)
    assert reply.message.ByteSize() < 4096
    group = reply.plan.allocation[0]
    assert group.rack_ids(Mode.MINE) == [f"f-old-{k:05d}" for k in range(mine)]
    assert len(group.rack_ids(Mode.IDLE)) == idle
