"""Power markets in the model: size and speed with and without events, and what resale and DR earn.

Prints, in one run (single process, no Ray):
1. the example fleet (examples/fleet.yaml) as shipped, with curtailment events, demand-response calls
   and a take-or-pay site, next to the same fleet with events and calls switched off: scenario draw,
   economics, model build and solve times, model size, coupled steps, objective and mean profit;
2. where the example's profit comes from: resale revenue and demand-response credits as booked in the
   site breakdown, and as re-optimised counterfactuals (no demand-response programme; the Texas block
   as a plain fixed-price contract at the same price, paying only for what it draws, no resale);
3. compact against extensive form on small instances with events, resale and demand response.

    .venv/bin/python bench/bench_power.py [--scenarios 200] [--quick]
"""

from __future__ import annotations

import argparse

from common import ROOT, solve_compact, timed

from optimizer.economics import group_economics
from optimizer.extensive import build_extensive_model
from optimizer.fleet import Fleet, load_fleet, parse_fleet
from optimizer.formulation import build_compact_model
from optimizer.plan_result import site_breakdowns
from optimizer.scenarios import generate_scenarios
from solvers.highs import solve
from tests.conftest import events_fleet_data


def without_events(fleet: Fleet) -> Fleet:
    """The same fleet with no curtailment events, no demand-response calls and no DR programmes."""
    data = fleet.model_dump(mode="json")
    for market in data["markets"]:
        market["curtailment_events"], market["demand_response_calls"] = [], None
    for site in data["sites"]:
        site["demand_response"] = None
    return parse_fleet(data)


def without_dr(fleet: Fleet) -> Fleet:
    data = fleet.model_dump(mode="json")
    for site in data["sites"]:
        site["demand_response"] = None
    return parse_fleet(data)


def texas_fixed(fleet: Fleet) -> Fleet:
    """Take-or-pay sites as plain fixed-price contracts at the same price: pay for what is drawn, no resale."""
    data = fleet.model_dump(mode="json")
    for site in data["sites"]:
        if site["contract"]["type"] == "take_or_pay":
            site["contract"] = {"type": "fixed", "price_usd_per_mwh": site["contract"]["price_usd_per_mwh"]}
    return parse_fleet(data)


def example_fleet(n_scenarios: int) -> None:
    fleet = load_fleet(ROOT / "examples/fleet.yaml")
    variants = {"with events+DR": fleet, "events off": without_events(fleet)}
    results = {name: solve_compact(f, n_scenarios) for name, f in variants.items()}
    steps = fleet.horizon.n_steps
    print(f"examples/fleet.yaml, {n_scenarios} scenarios x {steps} steps, objective {fleet.risk.objective.value}")
    print(
        f"{'':>15} | {'vars':>6} {'cons':>6} {'bin':>3} {'coupled':>7} | {'gen(s)':>6} {'econ(s)':>7} "
        f"{'build(s)':>8} {'solve(s)':>8} | {'objective $':>12} {'mean profit $':>13} | status"
    )
    for name, r in results.items():
        print(
            f"{name:>15} | {r['vars']:>6} {r['cons']:>6} {r['binaries']:>3} {r['coupled']:>7} | {r['gen_s']:>6.2f} "
            f"{r['econ_s']:>7.2f} {r['build_s']:>8.2f} {r['solve_s']:>8.2f} | {r['objective']:>12,.0f} "
            f"{r['mean']:>13,.0f} | {r['status']} gap {r['gap']:.1e}"
        )

    shipped = results["with events+DR"]
    sites = site_breakdowns(fleet, shipped["economics"], shipped["allocation"])
    mean = shipped["mean"]
    print("\nwhere the example's expected profit comes from (site breakdown, plan as optimised)")
    header = f"{'site':>14} {'contract':>12} | {'resale $':>11} {'DR MW':>6} {'DR credit $':>11} | "
    header += f"{'curtailed MWh':>13} {'by events/DR':>12} {'lost AI MWh':>11} {'SLA $':>9} | {'profit $':>11}"
    print(header)
    for s in sites:
        print(
            f"{s.site:>14} {s.contract:>12} | {s.expected_resale_revenue_usd:>11,.0f} {s.dr_commitment_mw:>6.1f} "
            f"{s.demand_response_credit_usd:>11,.0f} | {s.expected_curtailed_mwh:>13,.0f} "
            f"{s.expected_event_curtailed_mwh:>12,.0f} {s.expected_lost_ai_mwh:>11,.1f} "
            f"{s.expected_sla_penalty_usd:>9,.0f} | {s.expected_profit_usd:>11,.0f}"
        )
    resale = sum(s.expected_resale_revenue_usd for s in sites)
    credit = sum(s.demand_response_credit_usd for s in sites)
    print(
        f"resale revenue {resale:,.0f} = {resale / mean:.1%} of the mean profit {mean:,.0f}; "
        f"DR credits {credit:,.0f} = {credit / mean:.1%}"
    )

    no_dr = solve_compact(without_dr(fleet), n_scenarios)
    fixed = solve_compact(texas_fixed(fleet), n_scenarios)
    print("re-optimised counterfactuals (same scenarios):")
    print(
        f"  without the DR programme: objective {no_dr['objective']:,.0f}, mean {no_dr['mean']:,.0f} -> DR adds "
        f"{shipped['objective'] - no_dr['objective']:,.0f} to the objective, {mean - no_dr['mean']:,.0f} to the mean"
    )
    print(
        f"  take-or-pay as plain fixed price (no resale): objective {fixed['objective']:,.0f}, mean "
        f"{fixed['mean']:,.0f} -> resale right adds {shipped['objective'] - fixed['objective']:,.0f} to the "
        f"objective, {mean - fixed['mean']:,.0f} to the mean"
    )


def small_events_fleet(days: int, n_scenarios: int) -> Fleet:
    data = events_fleet_data(days=days, scenarios=n_scenarios, events_per_year=60)
    data["risk"] = {"objective": "cvar", "alpha": 0.9, "weight": 0.5}
    return parse_fleet(data)


def compare(days: int, n_scenarios: int) -> None:
    fleet = small_events_fleet(days, n_scenarios)
    scen = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(n_scenarios), 11)
    economics = group_economics(fleet, scen)
    compact, c_build = timed(lambda: build_compact_model(fleet, economics, fleet.risk))
    extensive, e_build = timed(lambda: build_extensive_model(fleet, scen, fleet.risk))
    c, e = solve(compact, 600, 0.0), solve(extensive, 600, 0.0)
    agree = abs(c.objective_usd - e.objective_usd) <= 1e-7 * max(1.0, abs(e.objective_usd))
    print(
        f"{days:>4}d {n_scenarios:>4} {economics.n_coupled:>7} | {compact.nvariables():>6} {compact.nconstraints():>6} "
        f"{extensive.nvariables():>7} {extensive.nconstraints():>7} | {c_build:>7.2f} {e_build:>7.2f} | "
        f"{c.wall_s:>7.2f} {e.wall_s:>7.2f} | {'yes' if agree else 'NO'} ({c.objective_usd:,.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", type=int, default=200, help="scenarios for the example fleet")
    parser.add_argument("--quick", action="store_true", help="smaller compact-vs-extensive sizes")
    args = parser.parse_args()
    example_fleet(args.scenarios)
    print("\ncompact vs extensive form with events, resale and DR (small fleet, hourly, mean-CVaR)")
    print("days scen coupled | vars(c) cons(c) vars(e) cons(e) | build(c) build(e) | solve(c) solve(e) | same optimum")
    for days, n in [(2, 5), (7, 10)] if args.quick else [(2, 5), (7, 10), (14, 20)]:
        compare(days, n)


if __name__ == "__main__":
    main()
