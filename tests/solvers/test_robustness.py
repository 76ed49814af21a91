"""Robustness on Ray: out-of-sample scoring, the MMW gap interval against a computed truth, VSS/EVPI, sensitivity."""

import numpy as np
import pytest

from optimizer.allocation import all_mining, scenario_profits_usd
from optimizer.economics import group_economics, rack_margin_usd
from optimizer.fleet import parse_fleet
from optimizer.robustness import RiskObjective, RobustnessSettings, allocation_from_plan
from optimizer.scenarios import EVALUATION_STREAM, generate_scenarios
from solvers.planner import plan_fleet, solve_allocation
from solvers.robustness import (
    assess_plan,
    collect_gap,
    evaluate_out_of_sample,
    submit_replications,
    wait_and_see,
)
from tests.fleets import small_fleet_data


def hedge_fleet_data(objective: str = "cvar", capacity_mw: float = 1.0, lease: bool = True) -> dict:
    """Hedging must pay: mining earns more on average, but BTC is very volatile; the AI lease is firm income.

    One site at a fixed power price, ten S21 racks. Over 30 days mining is worth ~$11.8k on average
    but ~$4.9k in the worst 10% of scenarios; the lease pays ~$10.3k whatever happens. A plan made on
    mean prices mines; a CVaR plan leases.
    """
    return {
        "name": "hedge",
        "horizon": {"start": "2026-12-01", "days": 30, "step_hours": 6},
        "bitcoin": {
            "price_vol_per_year": 1.5,
            "jump_intensity_per_year": 0,
            "hashrate_vol_per_year": 0.0,
            "hashrate_margin_response_per_year": 0.0,
            "hashrate_growth_per_year": 0.0,
        },
        "markets": [
            {
                "id": "m",
                "mean_price_usd_per_mwh": 30,
                "vol_per_sqrt_day": 0.0,
                "spike_prob_per_hour": 0.0,
                "daily_shape_amplitude": 0.0,
                "seasonal_amplitude": 0.0,
            }
        ],
        "machines": [{"id": "s21", "hashrate_ths": 200, "efficiency_j_per_th": 17.5}],
        "sites": [
            {
                "id": "dc",
                "market": "m",
                "capacity_mw": capacity_mw,
                "pue_mining": 1.0,
                "pue_ai": 1.0,
                "contract": {"type": "fixed", "price_usd_per_mwh": 30},
                "ai": {"capex_usd_per_mw": 0, "fixed_capex_usd": 0, "lead_time_days": 0, "min_mw": 0, "max_mw": 1},
            }
        ],
        "rack_groups": [
            {
                "id": "g",
                "site": "dc",
                "machine": "s21",
                "racks": 10,
                "machines_per_rack": 10,
                "opex_usd_per_rack_day": 2,
            }
        ],
        # a one-month lease: its rent covers about the 30-day horizon, so the hedge is rent vs mining alone
        "lease_offers": (
            [{"id": "colo", "rate_usd_per_kw_month": 30, "term_months": 1, "min_mw": 0, "max_mw": 1, "sites": ["dc"]}]
            if lease
            else []
        ),
        "risk": {"objective": objective, "alpha": 0.9, "weight": 0.7},
        "scenarios": {"count": 60, "seed": 5, "batch_size": 30},
        "solver": {"time_limit_s": 30, "mip_rel_gap": 0.0},
    }


QUICK = RobustnessSettings(oos_scenarios=200, replications=3, wait_and_see_scenarios=40, sensitivity=False)


def test_out_of_sample_uses_stream_one_and_scenario_profits(ray_session):
    fleet = parse_fleet(small_fleet_data(days=2, scenarios=6))
    plan, _ = plan_fleet(fleet)
    allocation = allocation_from_plan(plan)
    economics, profits = evaluate_out_of_sample(fleet, {"plan": allocation}, count=7, seed=3, batch_size=3)
    direct = group_economics(
        fleet, generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(7), 3, EVALUATION_STREAM)
    )
    np.testing.assert_array_equal(economics.mine_value_usd, direct.mine_value_usd)
    np.testing.assert_allclose(profits["plan"], scenario_profits_usd(fleet, direct, allocation))
    # the plan rebuilt from its PlanResult scores its own scenarios as the plan reported
    in_sample = group_economics(
        fleet, generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(6), fleet.scenarios.seed)
    )
    assert scenario_profits_usd(fleet, in_sample, allocation).mean() == pytest.approx(plan.profit["mean_usd"])


@pytest.mark.parametrize("objective", ["expected", "cvar"])
def test_gap_interval_covers_the_true_gap(ray_session, objective):
    """Truth: the optimum and the candidates' objectives on 2,000 scenarios (common numbers), far more than
    the replications' 12 each, so its error is small against the interval."""
    data = small_fleet_data(days=2, scenarios=6)
    data["risk"] = {"objective": objective, "alpha": 0.8, "weight": 0.5}
    fleet = parse_fleet(data)
    risk = RiskObjective(objective, 0.8, 0.5)
    truth = group_economics(fleet, generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(2000), 99))
    optimum = solve_allocation(fleet, truth, fleet.risk, fleet.solver).outcome.objective_usd
    plan, _ = plan_fleet(fleet)
    candidates = {"saa plan": allocation_from_plan(plan), "all mining": all_mining(fleet)}
    gaps = {}
    for name, candidate in candidates.items():
        true_gap = optimum - risk(scenario_profits_usd(fleet, truth, candidate))
        _, profits = evaluate_out_of_sample(fleet, {"c": candidate}, 300, fleet.scenarios.seed, 100)
        refs = submit_replications(fleet, 8, 12, fleet.scenarios.seed, 6, candidate)
        gap = collect_gap(refs, fleet, 12, profits["c"], 0.95)
        assert min(gap.gap_usd) >= -1e-6  # each replication's optimum beats any feasible plan on its own sample
        noise = 1e-9 * abs(optimum)  # float dust when the candidate is itself optimal
        assert -1e-6 <= true_gap <= gap.upper_bound_usd + noise, (name, true_gap, gap)
        gaps[name] = (true_gap, gap)
    # the poor candidate is far from optimal, and the estimator sees it: within 3 standard errors
    true_gap, gap = gaps["all mining"]
    assert true_gap > 100
    assert abs(gap.mean_gap_usd - true_gap) <= 3 * gap.std_gap_usd / np.sqrt(8) + 1e-6
    assert gaps["saa plan"][1].upper_bound_usd < 0.1 * true_gap


def test_hedging_pays_out_of_sample(ray_session):
    fleet = parse_fleet(hedge_fleet_data())
    plan, _ = plan_fleet(fleet)
    run = assess_plan(fleet, plan, settings=QUICK)
    report = run.report
    stochastic, mean_value = report.plan("stochastic"), report.plan("mean_value")
    assert (stochastic.racks_ai, stochastic.leased_mw) == (10, pytest.approx(0.35))  # the CVaR plan leases
    assert mean_value.racks_mine == 10  # mean prices say mine
    assert stochastic.cvar_usd > mean_value.cvar_usd + 3_000
    assert mean_value.mean_profit_usd.estimate_usd > stochastic.mean_profit_usd.estimate_usd  # the price of the hedge
    vss = report.value_of_stochastic_solution_usd
    assert vss.estimate_usd == pytest.approx(stochastic.objective_usd - mean_value.objective_usd)
    assert vss.lower_usd > 0
    evpi = report.expected_value_of_perfect_information_usd
    assert evpi.estimate_usd >= -1e-6 and evpi.upper_usd >= 0
    assert report.expected_value_of_perfect_information_mean_profit_usd.estimate_usd > 0
    assert report.optimality_gap.replications == 3 and report.optimality_gap.upper_bound_usd >= 0
    assert report.plan("calculator").racks_mine == 10 and report.plan("all_mining").racks_mine == 10


def test_wait_and_see_beats_the_plan_in_every_scenario(ray_session):
    fleet = parse_fleet(small_fleet_data(days=2, scenarios=6))
    plan, _ = plan_fleet(fleet)
    allocation = allocation_from_plan(plan)
    economics, profits = evaluate_out_of_sample(fleet, {"plan": allocation}, 10, 4, 5)
    ws, status = wait_and_see(fleet, economics, workers=None)
    assert status == ["optimal"] * 10
    assert np.all(ws >= profits["plan"] - 1e-6)
    # scenario by scenario, no feasible plan does better: all-mining is one of them
    assert np.all(ws >= scenario_profits_usd(fleet, economics, all_mining(fleet)) - 1e-6)


@pytest.mark.parametrize("objective", ["expected", "cvar"])
def test_vss_and_evpi_non_negative_within_sampling_error(ray_session, objective):
    data = small_fleet_data(days=2, scenarios=8)
    data["risk"] = {"objective": objective, "alpha": 0.8, "weight": 0.5}
    fleet = parse_fleet(data)
    plan, _ = plan_fleet(fleet)
    report = assess_plan(fleet, plan, settings=QUICK).report
    rounding = 1e-3  # USD: identical plans differ by solver round-off in leased MW
    assert report.value_of_stochastic_solution_usd.upper_usd >= -rounding
    assert report.value_of_stochastic_solution_mean_profit_usd.upper_usd >= -rounding
    assert report.expected_value_of_perfect_information_usd.estimate_usd >= -rounding
    # perfect information never hurts, scenario by scenario, so in the mean too
    assert report.expected_value_of_perfect_information_mean_profit_usd.estimate_usd >= -rounding


def test_value_of_one_more_mw_and_hashprice_flip(ray_session):
    """Mining only, capacity for 5 of 10 profitable racks: +1 MW lets all 10 mine, worth 5 racks' mean value."""
    data = hedge_fleet_data(objective="expected", capacity_mw=0.175, lease=False)
    data["sites"][0].pop("ai")
    data["rack_groups"][0]["opex_usd_per_rack_day"] = 35  # a rack earns ~$41/day before opex: flips near 0.87x
    fleet = parse_fleet(data)
    plan, _ = plan_fleet(fleet)
    assert plan.allocation[0].racks_mine == 5
    settings = RobustnessSettings(oos_scenarios=20, replications=0, wait_and_see_scenarios=0, sensitivity_scenarios=40)
    sens = assess_plan(fleet, plan, settings=settings).report.sensitivity
    assert sens.scenarios == 40
    sc = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(40), fleet.scenarios.seed)
    value = group_economics(fleet, sc).mine_value_usd[0].mean()
    assert value > 0
    assert sens.capacity[0].objective_gain_usd == pytest.approx(5 * value, rel=1e-9)
    flip = sens.hashprice_flips[0]
    assert flip.racks_mine == 5 and flip.racks_mine_below == 0 and flip.upper_factor is None
    # independently: the mean value of a rack with every hashprice scaled, hour by hour

    def value_at(factor: float) -> float:
        revenue, cost = rack_margin_usd(fleet, 0, sc)
        opex = fleet.rack_groups[0].opex_usd_per_rack_day * fleet.horizon.days
        return float((np.maximum(factor * revenue - cost, 0).sum(axis=1) - opex).mean())

    half_bracket = np.sqrt(1 + sens.flip_tolerance)  # the flip lies in the final bracket around the midpoint
    assert value_at(flip.lower_factor / half_bracket) < 0 < value_at(flip.lower_factor * half_bracket)
    today = sens.expected_hashprice_usd_per_ph_day
    assert flip.lower_hashprice_usd_per_ph_day == pytest.approx(flip.lower_factor * today)
