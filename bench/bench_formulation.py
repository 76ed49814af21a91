"""Compact MIP against the textbook extensive form, side by side in one run.

Prints, for growing scenario counts on a small fleet, the model size, build and solve time
of both formulations, their ratio and whether the optima agree; then the compact model on the
bundled example fleet (3,500 racks, one quarter hourly) at several scenario counts.

    .venv/bin/python bench/bench_formulation.py [--quick]
"""

from __future__ import annotations

import argparse

from common import ROOT, solve_compact, timed

from optimizer.economics import group_economics
from optimizer.extensive import build_extensive_model
from optimizer.fleet import load_fleet, parse_fleet
from optimizer.formulation import build_compact_model
from optimizer.scenarios import generate_scenarios
from solvers.highs import solve
from tests.conftest import medium_fleet_data


def compare(days: int, n_scenarios: int) -> None:
    data = medium_fleet_data(days=days, scenarios=n_scenarios)
    data["risk"] = {"objective": "cvar", "alpha": 0.9, "weight": 0.5}
    fleet = parse_fleet(data)
    scen = generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(n_scenarios), 11)
    (compact, econ_build_s) = timed(lambda: build_compact_model(fleet, group_economics(fleet, scen), fleet.risk))
    extensive, ext_build_s = timed(lambda: build_extensive_model(fleet, scen, fleet.risk))
    c = solve(compact, 600, 0.0)
    e = solve(extensive, 600, 0.0)
    agree = abs(c.objective_usd - e.objective_usd) <= 1e-7 * max(1.0, abs(e.objective_usd))
    print(
        f"{days:>4}d {n_scenarios:>5} | {compact.nvariables():>8} {extensive.nvariables():>9} | "
        f"{econ_build_s:7.3f} {ext_build_s:8.2f} | {c.wall_s:7.3f} {e.wall_s:8.2f} | "
        f"{(ext_build_s + e.wall_s) / (econ_build_s + c.wall_s):7.0f}x | {'yes' if agree else 'NO'}"
    )


def example_fleet(n_scenarios: int) -> None:
    fleet = load_fleet(ROOT / "examples/fleet.yaml")
    r = solve_compact(fleet, n_scenarios)
    print(
        f"{n_scenarios:>6} | {fleet.horizon.n_steps:>5} | {r['vars']:>6} {r['cons']:>6} | {r['gen_s']:7.2f} "
        f"{r['econ_s']:6.2f} {r['build_s']:6.2f} {r['solve_s']:6.2f} | {r['status']} gap {r['gap']:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    print("compact vs extensive form (small fleet, hourly, mean-CVaR objective alpha 0.9 weight 0.5)")
    print("days scen |  vars(c)  vars(ext) | build(c) build(e) | solve(c) solve(e) |  speedup | same optimum")
    sizes = [(2, 5), (3, 10)] if args.quick else [(2, 5), (3, 10), (7, 20), (14, 40)]
    for days, n in sizes:
        compare(days, n)
    print("\ncompact model on examples/fleet.yaml (single process, no Ray)")
    print(" scen | steps |   vars   cons | gen(s) econ(s) build(s) solve(s) | status")
    for n in [50, 200] if args.quick else [50, 200, 1000]:
        example_fleet(n)


if __name__ == "__main__":
    main()
