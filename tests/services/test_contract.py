"""The gRPC contract carries everything: every fleet input and every plan.json field, both ways.

Other work adds fields to Fleet and PlanResult; these tests list exactly which ones the proto
still lacks (extend protos/hashpivot/v1/*.proto, run scripts/gen_protos.sh).
"""

import dataclasses
import math

import pytest

from optimizer.allocation import Allocation, Mode
from optimizer.economics import group_economics
from optimizer.fleet import Fleet, FleetError, load_fleet, parse_fleet
from optimizer.plan_result import PlanResult
from optimizer.risk import ProfitStats
from optimizer.scenarios import generate_scenarios
from protos.hashpivot.v1 import fleet_pb2, plan_pb2, planner_service_pb2
from services import convert
from solvers.planner import ScenarioSpec, assemble_plan, solve_allocation
from tests.conftest import EXAMPLES, small_fleet_data


def test_every_fleet_field_has_a_proto_field():
    assert convert.missing_fields(Fleet, fleet_pb2.Fleet.DESCRIPTOR) == []


def test_every_plan_field_has_a_proto_field():
    assert convert.missing_fields(PlanResult, plan_pb2.Plan.DESCRIPTOR) == []


def test_profit_stats_and_scenario_info_fields():
    """PlanResult.profit and .scenarios are dicts: check their keys against the typed messages."""
    profit_fields = {f.name for f in plan_pb2.ProfitStats.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(ProfitStats)} <= profit_fields
    plan = small_plan()
    assert set(plan.scenarios) <= {f.name for f in plan_pb2.ScenarioInfo.DESCRIPTOR.fields}


def test_missing_fields_detects_gaps():
    """The completeness check can fail: a message without a nested field is reported with its path."""
    gaps = convert.missing_fields(Fleet, plan_pb2.Plan.DESCRIPTOR)
    assert "rack_groups" in gaps and "horizon" in gaps


def small_plan() -> PlanResult:
    fleet = parse_fleet(small_fleet_data())
    scenarios = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(6), fleet.scenarios.seed)
    economics = group_economics(fleet, scenarios)
    solved = solve_allocation(fleet, economics, fleet.risk, fleet.solver)
    return assemble_plan(fleet, economics, solved, ScenarioSpec(count=6, seed=fleet.scenarios.seed), "generated")


def test_plan_round_trip():
    plan = small_plan().model_copy(update={"timings_s": {"solve_s": 0.25, "total_s": 1.5}})
    message = convert.plan_to_message(plan, "plan-1")
    assert message.plan_id == "plan-1"
    assert message.objective == fleet_pb2.OBJECTIVE_EXPECTED
    assert message.solver.status == plan_pb2.SOLVE_STATUS_OPTIMAL
    assert message.scenarios.source == plan_pb2.SCENARIO_SOURCE_GENERATED
    assert message.profit.mean_usd == plan.profit["mean_usd"]
    assert [g.racks_mine for g in message.allocation] == [g.racks_mine for g in plan.allocation]
    back = convert.plan_from_message(plan_pb2.Plan.FromString(message.SerializeToString()))
    assert back == plan


def test_plan_with_unbounded_gap_round_trips():
    plan = small_plan()
    solver = plan.solver.model_copy(update={"mip_gap": math.inf, "status": "time_limit"})
    plan = plan.model_copy(update={"solver": solver})
    message = convert.plan_to_message(plan)
    assert math.isinf(message.solver.mip_gap) and message.solver.status == plan_pb2.SOLVE_STATUS_TIME_LIMIT
    assert convert.plan_from_message(message).solver == plan.solver


@pytest.mark.parametrize("path", ["tiny.yaml", "fleet.yaml"])
def test_example_fleets_round_trip(path):
    fleet = load_fleet(EXAMPLES / path)
    message = convert.fleet_to_message(fleet)
    assert convert.fleet_from_message(fleet_pb2.Fleet.FromString(message.SerializeToString())) == fleet


def test_unset_optional_fields_take_the_defaults():
    message = fleet_pb2.Fleet(
        markets=[fleet_pb2.PowerMarket(id="m", mean_price_usd_per_mwh=40)],
        machines=[fleet_pb2.Machine(id="a", hashrate_ths=100, efficiency_j_per_th=20)],
        sites=[
            fleet_pb2.Site(
                id="s",
                market="m",
                capacity_mw=1,
                contract=fleet_pb2.PowerContract(type=fleet_pb2.CONTRACT_TYPE_FIXED, price_usd_per_mwh=30),
            )
        ],
        rack_groups=[fleet_pb2.RackGroup(id="g", site="s", machine="a", racks=3, machines_per_rack=10)],
        risk=fleet_pb2.RiskSettings(objective=fleet_pb2.OBJECTIVE_CVAR),
    )
    fleet = convert.fleet_from_message(message)
    assert fleet.risk.objective.value == "cvar" and fleet.risk.alpha == 0.95  # alpha unset: the default
    assert fleet.rack_groups[0].convertible is True  # optional bool unset: default True, not proto's false
    assert fleet.sites[0].pue_mining == 1.05 and fleet.sites[0].ai is None
    assert fleet.pool_fee_fraction == 0.02 and fleet.horizon.days == 91
    message.rack_groups[0].convertible = False
    assert convert.fleet_from_message(message).rack_groups[0].convertible is False


def test_bad_fleet_errors_name_proto_field_paths():
    message = convert.fleet_to_message(parse_fleet(small_fleet_data()))
    message.sites[1].capacity_mw = 0
    message.sites[0].contract.type = fleet_pb2.CONTRACT_TYPE_UNSPECIFIED
    with pytest.raises(FleetError) as err:
        convert.fleet_from_message(message)
    paths = {convert.field_path(p, "fleet") for p, _ in err.value.violations}
    assert paths == {"fleet.sites[1].capacity_mw", "fleet.sites[0].contract.type"}


def test_field_paths():
    assert convert.field_path("sites.1.ai.min_mw", "fleet") == "fleet.sites[1].ai.min_mw"
    assert convert.field_path("lease_offers.0.sites.2", "fleet") == "fleet.lease_offers[0].sites[2]"
    assert convert.field_path("<root>", "fleet") == "fleet"
    assert convert.field_path("commitments.accept_offers[0]") == "commitments.accept_offers[0]"


def test_raw_fleet_mapping_with_an_unknown_key_names_it():
    data = small_fleet_data()
    data["sites"][0]["capacity_kw"] = 5
    with pytest.raises(FleetError) as err:
        convert.fleet_to_message(data)
    assert err.value.violations[0][0] == "sites[0].capacity_kw"


def test_enum_mapping():
    descriptor = plan_pb2.SolveStatus.DESCRIPTOR
    assert convert.enum_prefix(descriptor) == "SOLVE_STATUS_"
    assert convert.enum_number(descriptor, "time_limit") == plan_pb2.SOLVE_STATUS_TIME_LIMIT
    assert convert.enum_number(descriptor, "no_such_status") is None
    assert convert.enum_value(descriptor, plan_pb2.SOLVE_STATUS_INTERRUPTED) == "interrupted"
    assert convert.enum_value(descriptor, 0) is None


def test_allocation_round_trip_and_checks():
    fleet = parse_fleet(small_fleet_data())
    allocation = Allocation(
        racks={
            "f-old": {Mode.MINE: 4, Mode.AI: 0, Mode.IDLE: 0},
            "s-old": {Mode.MINE: 0, Mode.AI: 3, Mode.IDLE: 0},
            "s-new": {Mode.MINE: 1, Mode.AI: 0, Mode.IDLE: 2},
        },
        converted_sites=frozenset({"spot"}),
        lease_mw={("colo", "spot"): 0.05},
    )
    message = convert.allocation_to_message(allocation)
    assert convert.allocation_from_message(message, fleet) == allocation
    message.racks[1].group = "nope"
    message.leases[0].offer = "other"
    with pytest.raises(FleetError) as err:
        convert.allocation_from_message(message, fleet)
    paths = [p for p, _ in err.value.violations]
    assert paths == ["allocation.racks[1].group", "allocation.racks", "allocation.leases[0].offer"]


def test_commitments_must_name_offers_and_ai_ready_sites():
    fleet = parse_fleet(small_fleet_data())
    ok = planner_service_pb2.Commitments(accept_offers=["colo"], convert_sites=["spot"])
    assert convert.commitments_from_message(ok, fleet).convert_sites == ("spot",)
    bad = planner_service_pb2.Commitments(accept_offers=["colo", "x"], convert_sites=["fixed"])
    with pytest.raises(FleetError) as err:
        convert.commitments_from_message(bad, fleet)
    assert [p for p, _ in err.value.violations] == ["commitments.accept_offers[1]", "commitments.convert_sites[0]"]
