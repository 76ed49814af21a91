"""The gRPC contract carries everything: every fleet input and every plan.json field, both ways.

Other work adds fields to Fleet and PlanResult; these tests list exactly which ones the proto
still lacks (extend protos/hashpivot/v1/*.proto, run scripts/gen_protos.sh).
"""

import dataclasses
import functools

import numpy as np
import pytest

from optimizer.allocation import Allocation, Mode
from optimizer.dispatch import decide
from optimizer.economics import group_economics
from optimizer.fleet import Fleet, FleetError, load_fleet, parse_fleet
from optimizer.market import ALL_MONTHS
from optimizer.plan_result import PlanResult
from optimizer.rack_ranges import expand
from optimizer.risk import ProfitStats
from optimizer.robustness import RobustnessSettings
from optimizer.scenarios import generate_scenarios
from protos.hashpivot.v1 import fleet_pb2, plan_pb2, planner_service_pb2
from services import convert
from services.dispatcher import plan_dispatch_table
from services.store import plan_json
from solvers.planner import ScenarioSpec, assemble_plan, plan_fleet, solve_allocation
from solvers.robustness import assess_plan
from tests.fleets import EXAMPLES, events_fleet_data, million_rack_fleet_data, small_fleet_data


def test_every_fleet_field_has_a_proto_field():
    assert convert.missing_fields(Fleet, fleet_pb2.Fleet.DESCRIPTOR) == []


def test_every_plan_field_has_a_proto_field():
    assert convert.missing_fields(PlanResult, plan_pb2.Plan.DESCRIPTOR) == []


def test_every_robustness_setting_has_a_proto_field():
    assert convert.missing_fields(RobustnessSettings, plan_pb2.RobustnessSettings.DESCRIPTOR) == []


def test_robustness_settings_round_trip_and_defaults():
    settings = RobustnessSettings(oos_scenarios=40, replications=0, sensitivity=False, confidence_level=0.9)
    message = convert.robustness_settings_to_message(settings)
    assert convert.robustness_settings_from_message(message) == settings
    # unset fields take the defaults of `hashpivot plan` (sensitivity unset is true, not proto's false)
    assert convert.robustness_settings_from_message(plan_pb2.RobustnessSettings()) == RobustnessSettings()
    bad = plan_pb2.RobustnessSettings(oos_scenarios=1, confidence_level=0.3)
    with pytest.raises(FleetError) as err:
        convert.robustness_settings_from_message(bad)
    assert [p for p, _ in err.value.violations] == ["robustness.oos_scenarios", "robustness.confidence_level"]


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


def test_a_million_rack_plan_is_a_few_kb_and_round_trips_to_the_same_allocation():
    fleet = parse_fleet(million_rack_fleet_data())
    plan, _ = plan_fleet(fleet, local=True)
    group = plan.allocation[0]
    assert 0 < group.racks_mine < 1_000_000 and group.racks_mine + group.racks_idle == 1_000_000
    wire = convert.plan_to_message(plan, "plan-big").SerializeToString()
    assert len(wire) < 4096  # every id listed, it was 17.9 MB
    back = convert.plan_from_message(plan_pb2.Plan.FromString(wire))
    assert back == plan
    assert convert.plan_allocation(back) == convert.plan_allocation(plan)
    mining = back.allocation[0].rack_ids(Mode.MINE)
    assert len(mining) == group.racks_mine and mining[0] == "f-old-00000"
    assert mining[-1] == f"f-old-{group.racks_mine - 1:05d}"
    assert back.allocation[0].rack_ids(Mode.IDLE)[-1] == "f-old-999999"
    table = plan_dispatch_table(fleet, back)
    decision = decide(table, np.array([1.0]), 35.0)  # cheap power: every mining rack runs
    reply = convert.dispatch_response("plan-big", table, decision, include_rack_ids=True)
    assert reply.ByteSize() < 1024  # with every id listed it was ~13 MB
    (group_reply,) = reply.groups
    assert expand(convert.rack_ranges_from_message(group_reply.rack_ranges)) == mining
    assert group_reply.racks_run == len(mining)


def test_plan_with_unbounded_gap_round_trips():
    """An unknown bound and gap are unset in the message (never Infinity) and None again on the way back."""
    plan = small_plan()
    solver = plan.solver.model_copy(update={"bound_usd": None, "mip_gap": None, "status": "time_limit"})
    plan = plan.model_copy(update={"solver": solver})
    message = plan_pb2.Plan.FromString(convert.plan_to_message(plan).SerializeToString())
    assert message.solver.status == plan_pb2.SOLVE_STATUS_TIME_LIMIT
    assert not message.solver.HasField("bound_usd") and not message.solver.HasField("mip_gap")
    assert convert.plan_from_message(message).solver == plan.solver
    known = convert.plan_to_message(small_plan())
    assert known.solver.HasField("bound_usd") and known.solver.mip_gap == small_plan().solver.mip_gap


@pytest.mark.parametrize("path", ["tiny.yaml", "fleet.yaml"])
def test_example_fleets_round_trip(path):
    fleet = load_fleet(EXAMPLES / path)
    message = convert.fleet_to_message(fleet)
    assert convert.fleet_from_message(fleet_pb2.Fleet.FromString(message.SerializeToString())) == fleet


def test_power_market_fleet_round_trips():
    """Take-or-pay, demand response, curtailment events (one without months), SLA penalties."""
    data = events_fleet_data()
    fleet = parse_fleet(data)
    message = convert.fleet_to_message(fleet)
    assert message.sites[1].contract.type == fleet_pb2.CONTRACT_TYPE_TAKE_OR_PAY
    assert message.sites[1].contract.resale_fee_usd_per_mwh == 2
    assert message.sites[1].demand_response.credit_usd_per_mw_month == 8_000
    assert message.lease_offers[0].sla_penalty_usd_per_mwh == 400
    storm = message.markets[0].curtailment_events[0]
    assert storm.available_fraction == pytest.approx(0.2) and list(storm.months) == []  # default: every month
    assert not storm.HasField("price_floor_usd_per_mwh")
    assert message.markets[0].curtailment_events[1].price_floor_usd_per_mwh == 300
    assert message.markets[0].demand_response_calls.call_hours == 3
    back = convert.fleet_from_message(fleet_pb2.Fleet.FromString(message.SerializeToString()))
    assert back == fleet
    assert back.markets[0].curtailment_events[0].months == ALL_MONTHS
    # an empty list of events is the default too, and a site without a programme has none
    data["markets"][0]["curtailment_events"] = []
    data["sites"][0].pop("demand_response")
    fleet = parse_fleet(data)
    assert convert.fleet_from_message(convert.fleet_to_message(fleet)) == fleet


def test_power_market_errors_name_proto_field_paths():
    message = convert.fleet_to_message(parse_fleet(events_fleet_data()))
    message.markets[0].curtailment_events[0].months.extend([13])
    message.sites[1].demand_response.max_mw = 0
    with pytest.raises(FleetError) as err:
        convert.fleet_from_message(message)
    paths = {convert.field_path(p, "fleet") for p, _ in err.value.violations}
    assert paths == {"fleet.markets[0].curtailment_events[0].months", "fleet.sites[1].demand_response.max_mw"}


SMALL_ROBUSTNESS = RobustnessSettings(
    oos_scenarios=12, replications=2, wait_and_see_scenarios=4, sensitivity_scenarios=4, bootstrap_resamples=100
)


@functools.cache
def power_plan_with_robustness() -> tuple[Fleet, PlanResult]:
    """A fleet with every power feature (take-or-pay resale, DR, events, SLA), planned and assessed (~5 s)."""
    fleet = parse_fleet(events_fleet_data(days=2, scenarios=6, events_per_year=60))
    plan, _ = plan_fleet(fleet)
    report = assess_plan(fleet, plan, settings=SMALL_ROBUSTNESS).report
    return fleet, plan.model_copy(update={"robustness": report})


def test_plan_with_power_features_and_robustness_round_trips(ray_session):
    fleet, plan = power_plan_with_robustness()
    spot = next(s for s in plan.sites if s.site == "spot")
    # the features are in use, so the round trip carries real values
    assert spot.contract == "take_or_pay" and spot.expected_resale_revenue_usd > 0
    assert sum(s.dr_commitment_mw for s in plan.sites) > 0 and sum(s.demand_response_credit_usd for s in plan.sites) > 0
    assert sum(s.expected_event_curtailed_mwh for s in plan.sites) > 0 and spot.expected_lost_ai_mwh > 0
    report = plan.robustness
    assert report.optimality_gap is not None and report.wait_and_see is not None and report.sensitivity is not None
    assert any(f.lower_factor is None or f.upper_factor is None for f in report.sensitivity.hashprice_flips)

    message = convert.plan_to_message(plan, "plan-power")
    assert message.sites[1].contract == fleet_pb2.CONTRACT_TYPE_TAKE_OR_PAY
    assert message.robustness.objective == fleet_pb2.OBJECTIVE_EXPECTED
    assert [p.plan for p in message.robustness.plans] == ["stochastic", "mean_value", "calculator", "all_mining"]
    assert list(message.robustness.optimality_gap.solver_status) == [plan_pb2.SOLVE_STATUS_OPTIMAL] * 2
    assert message.robustness.wait_and_see.scenarios == 4
    assert not message.robustness.optimality_gap.HasField("candidate_var_usd")  # None: the objective is not CVaR
    back = convert.plan_from_message(plan_pb2.Plan.FromString(message.SerializeToString()))
    assert back == plan
    # and what the job store writes reads back the same
    assert PlanResult.model_validate_json(plan_json(plan)) == plan


def test_plan_without_optional_robustness_sections_round_trips():
    """None sections (no replications, no wait-and-see, no sensitivity) stay None, not empty messages."""
    plan = small_plan()
    interval = {"estimate_usd": 1.0, "lower_usd": None, "upper_usd": None, "confidence_level": 0.95}
    evaluation = {
        "plan": "stochastic",
        "description": "d",
        "feasible": True,
        "violations": [],
        "racks_mine": 1,
        "racks_ai": 0,
        "racks_idle": 0,
        "leased_mw": 0.0,
        "sites": [],
        "mean_profit_usd": {**interval, "method": "t"},
        **dict.fromkeys(["std_profit_usd", "p5_profit_usd", "p50_profit_usd", "p95_profit_usd"], 0.0),
        **dict.fromkeys(["var_usd", "cvar_usd", "worst_profit_usd", "objective_usd"], 0.0),
    }
    report = {
        "objective": "cvar",
        "alpha": 0.9,
        "weight": 0.5,
        "confidence_level": 0.95,
        "out_of_sample_scenarios": 2,
        "out_of_sample_seed": 1,
        "out_of_sample_stream": 1,
        "plans": [evaluation],
        "wait_and_see": None,
        "value_of_stochastic_solution_usd": {**interval, "method": "paired bootstrap"},
        "value_of_stochastic_solution_mean_profit_usd": {**interval, "method": "paired t"},
        "expected_value_of_perfect_information_usd": None,
        "expected_value_of_perfect_information_mean_profit_usd": None,
        "optimality_gap": None,
        "sensitivity": None,
        "typical_scenario_index": 0,
        "stress_scenario_index": 1,
        "notes": [],
        "timings_s": {},
    }
    plan = plan.model_validate({**plan.model_dump(), "robustness": report})
    message = convert.plan_to_message(plan)
    assert not message.robustness.HasField("optimality_gap") and not message.robustness.HasField("wait_and_see")
    assert convert.plan_from_message(message) == plan
    assert convert.plan_from_message(convert.plan_to_message(small_plan())).robustness is None


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


def test_allocation_carries_demand_response_mw():
    fleet = parse_fleet(events_fleet_data())
    counts = {g.id: {Mode.MINE: g.racks, Mode.AI: 0, Mode.IDLE: 0} for g in fleet.rack_groups}
    allocation = Allocation(racks=counts, dr_mw={"spot": 0.5, "fixed": 0.25})
    message = convert.allocation_to_message(allocation)
    assert dict(message.dr_mw_by_site) == {"spot": 0.5, "fixed": 0.25}
    assert convert.allocation_from_message(message, fleet) == allocation
    message.dr_mw_by_site["mars"] = 1.0
    message.dr_mw_by_site["spot"] = -1.0
    with pytest.raises(FleetError) as err:
        convert.allocation_from_message(message, fleet)
    assert sorted(p for p, _ in err.value.violations) == [
        "allocation.dr_mw_by_site[mars]",
        "allocation.dr_mw_by_site[spot]",
    ]


def test_plan_allocation_keeps_the_demand_response_commitment(ray_session):
    fleet, plan = power_plan_with_robustness()
    allocation = convert.plan_allocation(plan)
    assert allocation.dr_mw == {s.site: s.dr_commitment_mw for s in plan.sites if s.dr_commitment_mw > 0}
    assert allocation.dr_mw  # the plan commits some MW


def test_commitments_must_name_offers_and_ai_ready_sites():
    fleet = parse_fleet(small_fleet_data())
    ok = planner_service_pb2.Commitments(accept_offers=["colo"], convert_sites=["spot"])
    assert convert.commitments_from_message(ok, fleet).convert_sites == ("spot",)
    bad = planner_service_pb2.Commitments(accept_offers=["colo", "x"], convert_sites=["fixed"])
    with pytest.raises(FleetError) as err:
        convert.commitments_from_message(bad, fleet)
    assert [p for p, _ in err.value.violations] == ["commitments.accept_offers[1]", "commitments.convert_sites[0]"]
