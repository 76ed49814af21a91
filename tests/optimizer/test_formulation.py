"""The compact MIP against brute force and against the textbook extensive form."""

import itertools

import numpy as np
import pytest

from optimizer.allocation import Allocation, Mode, check_feasible, converted_mw, scenario_profits_usd
from optimizer.constants import KW_PER_MW
from optimizer.economics import group_economics
from optimizer.extensive import build_extensive_model
from optimizer.fleet import Fleet, RiskSettings, parse_fleet
from optimizer.formulation import build_compact_model, extract_allocation
from optimizer.risk import risk_objective_value
from solvers.highs import solve
from tests.fleets import RISKS, medium_fleet_data, scenarios_for, small_fleet_data


def best_lease(fleet: Fleet, racks: dict, converted: bool) -> dict:
    """With one offer at one site, rent per MW is positive in every scenario: lease all that fits, or none."""
    offer, site = fleet.lease_offers[0], fleet.site("spot")
    if not converted:
        return {}
    ai_mw = converted_mw(fleet, Allocation(racks, frozenset({"spot"})), "spot")
    mining_kw = sum(
        racks[g.id][Mode.MINE] * fleet.rack_power_kw(g) * site.pue_mining for g in fleet.rack_groups if g.site == "spot"
    )
    room_mw = (site.capacity_mw * KW_PER_MW - mining_kw) / site.pue_ai / KW_PER_MW
    mw = min(ai_mw, offer.max_mw, room_mw)
    return {(offer.id, "spot"): mw} if mw >= offer.min_mw else {}


def brute_force(fleet: Fleet, economics, risk: RiskSettings) -> float:
    per_group = []
    for group in fleet.rack_groups:
        ai_max = group.racks if fleet.can_convert(group) else 0
        per_group.append(
            [
                {Mode.MINE: m, Mode.AI: a, Mode.IDLE: group.racks - m - a}
                for m in range(group.racks + 1)
                for a in range(ai_max + 1)
                if m + a <= group.racks
            ]
        )
    best = -np.inf
    for combo in itertools.product(*per_group):
        racks = {g.id: c for g, c in zip(fleet.rack_groups, combo, strict=True)}
        for converted in (False, True):
            allocation = Allocation(
                racks, frozenset({"spot"} if converted else ()), best_lease(fleet, racks, converted)
            )
            if check_feasible(fleet, allocation):
                continue
            profits = scenario_profits_usd(fleet, economics, allocation)
            best = max(best, risk_objective_value(profits, risk.objective.value, risk.alpha, risk.weight))
    return best


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_compact_optimum_equals_brute_force(risk):
    fleet = parse_fleet(small_fleet_data(days=3, scenarios=6))
    economics = group_economics(fleet, scenarios_for(fleet))
    model = build_compact_model(fleet, economics, risk)
    outcome = solve(model, time_limit_s=60, mip_rel_gap=0.0)
    expected = brute_force(fleet, economics, risk)
    assert outcome.objective_usd == pytest.approx(expected, rel=1e-7, abs=1e-4)
    allocation = extract_allocation(model, fleet)
    assert check_feasible(fleet, allocation) == []
    # The chosen plan, re-evaluated in numpy without the model, scores the optimum too.
    profits = scenario_profits_usd(fleet, economics, allocation)
    assert risk_objective_value(profits, risk.objective.value, risk.alpha, risk.weight) == pytest.approx(
        expected, rel=1e-7, abs=1e-4
    )


def test_brute_force_instance_is_not_trivial():
    """The instance must make AI, mining and idling all attractive somewhere, or the test proves little."""
    fleet = parse_fleet(small_fleet_data(days=3, scenarios=6))
    economics = group_economics(fleet, scenarios_for(fleet))
    model = build_compact_model(fleet, economics, RISKS[0])
    solve(model, time_limit_s=60, mip_rel_gap=0.0)
    allocation = extract_allocation(model, fleet)
    used = {mode for counts in allocation.racks.values() for mode, n in counts.items() if n}
    assert used == {Mode.MINE, Mode.AI, Mode.IDLE}


@pytest.mark.parametrize("risk", RISKS, ids=lambda r: r.objective.value)
def test_compact_equals_extensive_form(risk):
    fleet = parse_fleet(medium_fleet_data(days=2, scenarios=5))
    scenarios = scenarios_for(fleet)
    compact = build_compact_model(fleet, group_economics(fleet, scenarios), risk)
    extensive = build_extensive_model(fleet, scenarios, risk)
    compact_outcome = solve(compact, time_limit_s=60, mip_rel_gap=0.0)
    extensive_outcome = solve(extensive, time_limit_s=120, mip_rel_gap=0.0)
    assert extensive.nvariables() > 10 * compact.nvariables()
    assert compact_outcome.objective_usd == pytest.approx(extensive_outcome.objective_usd, rel=1e-7, abs=1e-3)


def test_capital_budget_with_nothing_to_spend_it_on_plans_as_without_it():
    """A budget on a fleet with no conversion and no purchase bounds nothing: the same optimum as no budget
    (it used to fail model building on a constant constraint)."""
    data = small_fleet_data(days=2, scenarios=4)
    data.update(sites=data["sites"][:1], rack_groups=data["rack_groups"][:1], lease_offers=[])
    with_budget = parse_fleet(data)
    without = parse_fleet({k: v for k, v in data.items() if k != "capital_budget_usd"})
    economics = group_economics(with_budget, scenarios_for(with_budget))
    risk = RISKS[0]
    solved = [
        solve(build_compact_model(f, economics, risk), time_limit_s=60, mip_rel_gap=0.0) for f in (with_budget, without)
    ]
    assert solved[0].objective_usd == pytest.approx(solved[1].objective_usd, rel=1e-9)
    mine_all = {"f-old": {Mode.MINE: 4, Mode.AI: 0, Mode.IDLE: 0}}
    profits = scenario_profits_usd(with_budget, economics, Allocation(mine_all, frozenset()))
    best = max(risk_objective_value(profits * share, risk.objective.value, risk.alpha, risk.weight) for share in (0, 1))
    assert solved[0].objective_usd >= best - 1e-6  # at least as good as all-idle or all-mining
