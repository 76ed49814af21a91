"""UploadScenarios: a caller's own scenario file sent in chunks, stored with its owner, referenced by id."""

import json

import grpc
import numpy as np
import pytest
import yaml

from optimizer.allocation import scenario_profits_usd
from optimizer.fleet import parse_fleet
from optimizer.scenario_io import load_scenarios, save_scenarios
from optimizer.scenarios import generate_scenarios
from protos.hashpivot.v1 import jobs_pb2
from services import convert
from services.admission import Limits
from services.cli import main
from services.client import PlannerClient, PlannerError, scenario_bytes
from services.validation import MAX_CHUNK_BYTES
from solvers.planner import ScenarioSpec, compute_economics, plan_fleet
from solvers.ray_pool import in_process
from tests.fleets import small_fleet_data
from tests.services.grpc_harness import ServerThread
from tests.services.test_security import TOKENS, token_config

UPLOAD_LIMIT_BYTES = 2 * 1024**2  # the test server's max_scenario_upload_bytes: two chunks, ~600 small scenarios


@pytest.fixture(scope="module")
def fleet():
    return parse_fleet(small_fleet_data(days=3, scenarios=6))


@pytest.fixture(scope="module")
def scenario_file(fleet, tmp_path_factory):
    """Nine scenarios drawn with another seed than the fleet's: a plan on them differs from the fleet's own."""
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(9), seed=1234)
    path = tmp_path_factory.mktemp("paths") / "desk.npz"
    save_scenarios(path, scenarios)
    return path


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    config = token_config()
    config.limits = Limits(max_scenario_upload_bytes=UPLOAD_LIMIT_BYTES, max_scenario_sets_per_caller=4)
    with ServerThread(tmp_path_factory.mktemp("sets") / "db.sqlite", config=config) as srv:
        yield srv


def _client(server, user: str) -> PlannerClient:
    token = next(t for t, (caller, _, _) in TOKENS.items() if caller == user)
    return PlannerClient(server.target, timeout_s=120, token=token)


@pytest.fixture(scope="module")
def alice(server):
    with _client(server, "alice") as client:
        yield client


def test_upload_then_plan_is_the_plan_made_locally_on_that_file(alice, fleet, scenario_file):
    assert scenario_file.stat().st_size < UPLOAD_LIMIT_BYTES
    uploaded = alice.upload_scenarios(scenario_file, name="desk")
    assert (uploaded.scenarios, uploaded.steps, uploaded.step_hours) == (9, fleet.horizon.n_steps, 1.0)
    assert list(uploaded.markets) == ["ercot"] and uploaded.size_bytes == scenario_file.stat().st_size
    local, _ = plan_fleet(fleet, provided=load_scenarios(scenario_file), local=True)
    remote = alice.optimize(fleet, scenario_set_id=uploaded.scenario_set_id).plan
    assert remote.scenarios["source"] == "file" and remote.scenarios["count"] == 9
    assert remote.profit == local.profit
    assert [g.lifecycles for g in remote.allocation] == [g.lifecycles for g in local.allocation]
    generated, _ = plan_fleet(fleet, local=True)
    assert generated.profit != local.profit  # the set was used, not the fleet's own draws

    job = alice.submit(fleet, scenario_set_id=uploaded.scenario_set_id)
    states = [j.state for j in alice.watch(job.job_id)]
    assert states[-1] == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    assert alice.get(job.job_id)[1].plan.profit == local.profit

    # Evaluate on the set scores every scenario of it: the plan's own profit, by numpy instead of the MIP
    evaluation = alice.evaluate(
        fleet=fleet, allocation=local, scenario_set_id=uploaded.scenario_set_id, include_scenario_profits=True
    )
    assert evaluation.scenario_count == 9
    with in_process(True):
        economics, _ = compute_economics(
            fleet, ScenarioSpec(count=9, seed=0, provided=load_scenarios(scenario_file)), batch_size=9
        )
    expected = scenario_profits_usd(fleet, economics, convert.plan_allocation(local))
    np.testing.assert_allclose(evaluation.scenario_profits_usd, expected, rtol=1e-9)
    assert evaluation.profit.mean_usd == pytest.approx(local.profit["mean_usd"], rel=1e-9)


def test_a_file_of_several_chunks_is_stored_whole(alice, fleet):
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(400), seed=7)
    size = len(scenario_bytes(scenarios))
    assert MAX_CHUNK_BYTES < size < UPLOAD_LIMIT_BYTES  # two chunks
    uploaded = alice.upload_scenarios(scenarios, name="two chunks")
    assert (uploaded.scenarios, uploaded.size_bytes, uploaded.name) == (400, size, "two chunks")
    alice.delete_scenario_set(uploaded.scenario_set_id)


def test_oversized_upload_is_refused_naming_the_limit(alice, fleet):
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(800), seed=5)
    with pytest.raises(PlannerError) as err:
        alice.upload_scenarios(scenarios)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_scenario_upload_bytes" in err.value.message
    assert [limit for limit, _ in err.value.quota_violations] == ["max_scenario_upload_bytes"]
    assert f"{UPLOAD_LIMIT_BYTES:,}" in err.value.quota_violations[0][1]


def test_another_tenant_cannot_use_or_delete_the_set(server, alice, fleet, scenario_file):
    uploaded = alice.upload_scenarios(scenario_file)
    with _client(server, "bob") as bob:
        for call in (
            lambda: bob.optimize(fleet, scenario_set_id=uploaded.scenario_set_id),
            lambda: bob.submit(fleet, scenario_set_id=uploaded.scenario_set_id),
            lambda: bob.evaluate(
                fleet=fleet,
                allocation=convert.plan_allocation(alice.optimize(fleet).plan),
                scenario_set_id=uploaded.scenario_set_id,
            ),
            lambda: bob.delete_scenario_set(uploaded.scenario_set_id),
        ):
            with pytest.raises(PlannerError) as err:
                call()
            assert err.value.code == grpc.StatusCode.NOT_FOUND, err.value
            assert uploaded.scenario_set_id in err.value.message
    with _client(server, "rita") as reader, pytest.raises(PlannerError) as err:
        reader.upload_scenarios(scenario_file)
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    alice.delete_scenario_set(uploaded.scenario_set_id)
    with pytest.raises(PlannerError) as err:
        alice.optimize(fleet, scenario_set_id=uploaded.scenario_set_id)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_bad_files_and_mismatched_sets_name_the_field(alice, fleet, scenario_file):
    with pytest.raises(PlannerError) as err:
        alice.upload_scenarios(b"not an npz archive")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.field_violations] == ["chunk"]
    uploaded = alice.upload_scenarios(scenario_file)
    longer = parse_fleet(small_fleet_data(days=4, scenarios=6))  # 96 steps; the set has 72
    with pytest.raises(PlannerError) as err:
        alice.optimize(longer, scenario_set_id=uploaded.scenario_set_id)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.field_violations] == ["scenario_set_id"]
    with pytest.raises(PlannerError) as err:
        alice.evaluate(
            fleet=fleet,
            allocation=convert.plan_allocation(alice.optimize(fleet).plan),
            count=3,
            scenario_set_id=uploaded.scenario_set_id,
        )
    assert [f for f, _ in err.value.field_violations] == ["scenarios"]
    alice.delete_scenario_set(uploaded.scenario_set_id)


def test_cli_uploads_the_scenario_file_then_plans_on_it(server, fleet, scenario_file, tmp_path, capsys):
    fleet_file = tmp_path / "small.yaml"
    fleet_file.write_text(yaml.safe_dump(small_fleet_data(days=3, scenarios=6)))
    token_file = tmp_path / "token"
    token_file.write_text("alice-secret")
    target = ["client", "--target", server.target, "--timeout", "120", "--token-file", str(token_file)]
    out = tmp_path / "out"
    assert main([*target, "optimize", str(fleet_file), "--scenario-file", str(scenario_file), "--out", str(out)]) == 0
    assert "scenario_set_id scenarios-" in capsys.readouterr().err
    local, _ = plan_fleet(fleet, provided=load_scenarios(scenario_file), local=True)
    assert json.loads((out / "plan.json").read_text())["profit"] == pytest.approx(local.profit)


def test_serve_flags_set_the_upload_limits():
    from services.cli import build_parser
    from services.service_cli import serve_config

    args = build_parser().parse_args(["serve", "--insecure", "--max-upload-mb", "1.5", "--max-scenario-sets", "3"])
    limits = serve_config(args).limits
    assert (limits.max_scenario_upload_bytes, limits.max_scenario_sets_per_caller) == (1536 * 1024, 3)


def test_admission_counts_the_sets_scenarios_not_the_fleets(fleet):
    from services import admission

    limits = Limits(max_scenarios=100)
    assert admission.check(fleet, None, limits) == []  # the fleet draws 6
    over = admission.check(fleet, None, limits, scenario_set=("scenario_set_id", 101))
    assert [(limit, fields.split(",")[0]) for limit, fields, _ in over] == [("max_scenarios", "scenario_set_id")]
    small = admission.estimate(fleet, scenarios=6)
    assert admission.estimate(fleet, scenarios=600).scenario_steps == 100 * small.scenario_steps
