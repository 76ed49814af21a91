"""The plan's report from per-batch sums (optimizer/report_sums.py) equals the report from every scenario at once,
and the decomposition's plan path never gathers the scenarios into the driver (issue 10, memory item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.allocation import scenario_profits_usd, site_profits
from optimizer.economics import economics_grid
from optimizer.fleet import parse_fleet, with_overrides
from optimizer.modes import Mode
from optimizer.report_sums import scenario_sums
from solvers.economics_batches import EconomicsBatches
from solvers.planner import (
    ScenarioSpec,
    assemble_plan,
    compute_economics,
    economics_batches,
    plan_fleet,
    solve_allocation,
)
from solvers.ray_pool import in_process
from tests.fleets import events_fleet_data, pivot_fleet_data


def _assert_close(a, b, path="plan"):
    """Equal structures; floats to 1e-9 relative (sums in another order round differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not math.isnan(a):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-6), path
    else:
        assert a == b, path


def _plan_inputs(data: dict, count: int):
    fleet = with_overrides(parse_fleet(data), {"solver": {"method": "monolithic", "mip_rel_gap": 1e-6}})
    spec = ScenarioSpec(count=count, seed=fleet.scenarios.seed)
    with in_process():
        economics, _ = compute_economics(fleet, spec, batch_size=count)
        solved = solve_allocation(fleet, economics, fleet.risk, fleet.solver)
    return fleet, spec, economics, solved


@pytest.mark.parametrize("data", [pivot_fleet_data(months=30, scenarios=5), events_fleet_data(days=3, scenarios=5)])
def test_report_from_batch_sums_equals_the_report_from_every_scenario(data):
    fleet, spec, economics, solved = _plan_inputs(data, 5)
    with in_process():
        whole = assemble_plan(fleet, economics, solved, spec, "generated").model_dump()
        batched = assemble_plan(fleet, EconomicsBatches.split(fleet, economics, 2), solved, spec, "generated")
    _assert_close(whole, batched.model_dump())


def test_expected_figures_are_the_scenario_means():
    """Checked against the per-scenario arrays directly: a sum divided twice, or a batch counted twice, fails."""
    fleet, spec, economics, solved = _plan_inputs(pivot_fleet_data(months=30, scenarios=5), 5)
    allocation, grid = solved.allocation, economics_grid(fleet, economics)
    with in_process():
        sums = EconomicsBatches.split(fleet, economics, 2).report_sums(fleet, allocation)
        plan = assemble_plan(fleet, economics, solved, spec, "generated")
    profits = site_profits(fleet, economics, allocation, grid)
    assert sums.n_scenarios == 5
    np.testing.assert_allclose(sums.profit_usd, scenario_profits_usd(fleet, economics, allocation), rtol=1e-12)
    np.testing.assert_allclose(sums.means().pv.hash_revenue_usd[:, 0], profits.hash_revenue_usd.mean(axis=1))
    for n, site in enumerate(plan.sites):
        assert site.expected_profit_usd == pytest.approx(profits.profit_usd[n].mean(), rel=1e-9)
    assert plan.profit["mean_usd"] == pytest.approx(profits.profit_usd.sum(axis=0).mean(), rel=1e-9)
    [conversion] = plan.conversions  # the pivot fleet converts site "a"
    site = next(s for s in fleet.sites if s.id == conversion.site)
    start = grid.conversion_start[site.id][allocation.start_option(site.id)]
    forgone = sum(
        economics.mine_value_usd[grid.group_profile[g], start:].sum(axis=0).mean() * allocation.count(group.id, Mode.AI)
        for g, group in enumerate(fleet.rack_groups)
        if group.site == site.id
    )
    assert forgone > 0
    assert conversion.mining_forgone_pv_usd == pytest.approx(forgone, rel=1e-9)
    whole = scenario_sums(fleet, economics, allocation, grid)
    with pytest.raises(ValueError, match="means do not add"):
        whole.means() + whole


def test_decomposed_plan_never_gathers_the_scenarios(monkeypatch):
    """plan_fleet with the decomposition keeps the economics batch by batch, solve and report alike."""
    fleet = with_overrides(
        parse_fleet(pivot_fleet_data(months=30, scenarios=6)),
        {"solver": {"method": "decomposition", "mip_rel_gap": 1e-6}, "scenarios": {"batch_size": 2}},
    )

    def refuse(self):  # gathering, or computing the economics whole
        raise AssertionError("every scenario gathered into the driver")

    monkeypatch.setattr(EconomicsBatches, "gather", refuse)
    monkeypatch.setattr("solvers.planner.compute_economics", lambda *a, **k: refuse(None))
    plan, _ = plan_fleet(fleet, local=True)
    monkeypatch.undo()
    spec = ScenarioSpec(count=6, seed=fleet.scenarios.seed)
    with in_process():
        economics, _ = compute_economics(fleet, spec, batch_size=6)
        solved = solve_allocation(fleet, economics, fleet.risk, fleet.solver)
        whole = assemble_plan(fleet, economics, solved, spec, "generated").model_dump()
        assert isinstance(economics_batches(fleet, spec, 2), EconomicsBatches)
    got = plan.model_dump()
    for volatile in ("timings_s", "solver"):
        got.pop(volatile), whole.pop(volatile)
    _assert_close(whole, got)
