import numpy as np
import pytest

from optimizer.allocation import scenario_profits_usd
from optimizer.fleet import parse_fleet, with_overrides
from optimizer.modes import MODES
from optimizer.risk import profit_stats
from solvers.planner import ScenarioSpec, compute_economics, plan_fleet
from tests.fleets import small_fleet_data


@pytest.fixture
def fleet():
    return parse_fleet(small_fleet_data(days=3, scenarios=12))


def test_same_plan_for_one_and_two_workers(ray_session, fleet):
    one, _ = plan_fleet(with_overrides(fleet, {"scenarios": {"batch_size": 5}}), workers=1)
    two, _ = plan_fleet(with_overrides(fleet, {"scenarios": {"batch_size": 3}}), workers=2)
    assert [g.model_dump() for g in one.allocation] == [g.model_dump() for g in two.allocation]
    assert one.profit == two.profit
    assert one.solver.objective_usd == two.solver.objective_usd


def test_economics_identical_for_any_batching(ray_session, fleet):
    spec = ScenarioSpec(count=7, seed=5)
    a, _ = compute_economics(fleet, spec, batch_size=7, workers=1)
    b, _ = compute_economics(fleet, spec, batch_size=2, workers=2)
    np.testing.assert_array_equal(a.mine_value_usd, b.mine_value_usd)
    other, _ = compute_economics(fleet, ScenarioSpec(count=7, seed=6), batch_size=7)
    assert not np.array_equal(a.mine_value_usd, other.mine_value_usd)


def test_plan_reports_consistent_economics(ray_session, fleet):
    plan, scenarios = plan_fleet(fleet, keep_scenarios=True)
    assert scenarios.n_scenarios == 12
    assert sum(s.expected_profit_usd for s in plan.sites) == pytest.approx(plan.profit["mean_usd"], rel=1e-9)
    assert plan.solver.status == "optimal"
    # The objective the solver reports equals the risk objective of the reported profit distribution.
    p = plan.profit
    assert plan.solver.objective_usd == pytest.approx(p["mean_usd"], rel=1e-6)  # expected objective by default
    for group, spec in zip(plan.allocation, fleet.rack_groups, strict=True):
        ids = [rack_id for mode in MODES for rack_id in group.rack_ids(mode)]
        assert len(ids) == len(set(ids)) == spec.racks
        assert set(ids) == {f"{spec.id}-{k:05d}" for k in range(spec.racks)}


def test_plan_on_user_scenarios_reproduces_generated_plan(ray_session, fleet):
    generated, scenarios = plan_fleet(fleet, keep_scenarios=True)
    provided, _ = plan_fleet(fleet, provided=scenarios)
    assert provided.scenarios["source"] == "file"
    assert provided.profit == generated.profit
    assert [g.racks_mine for g in provided.allocation] == [g.racks_mine for g in generated.allocation]


def test_profit_stats_match_allocation_evaluation(ray_session, fleet):
    from optimizer.allocation import Allocation, Mode

    plan, _ = plan_fleet(fleet)
    allocation = Allocation(
        racks={
            g.group: {Mode.MINE: g.racks_mine, Mode.AI: g.racks_ai, Mode.IDLE: g.racks_idle} for g in plan.allocation
        },
        converted_sites=frozenset(s.site for s in plan.ai_sites if s.converted),
        lease_mw={(o.offer, site): mw for o in plan.offers for site, mw in o.mw_by_site.items()},
    )
    economics, _ = compute_economics(fleet, ScenarioSpec(count=12, seed=fleet.scenarios.seed), batch_size=4)
    stats = profit_stats(scenario_profits_usd(fleet, economics, allocation), fleet.risk.alpha)
    assert stats.as_dict() == pytest.approx(plan.profit)
