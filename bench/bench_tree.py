"""Scenario-tree sizes the multi-stage model solves, side by side with the two-stage plan on the same leaves.

    .venv/bin/python bench/bench_tree.py [--fleet examples/pivot.yaml] [--time-limit 300]
        [--trees "0,6:3 0,6,12:3 0,6,12:4 0,6,12,24:3"] [--compare-recourse]

For each tree (decision months : branching) prints nodes, scenarios (leaves), the multi-stage model's
variables / integer variables / constraints and solve wall time, the now-or-never (two-stage compact)
model's on the same leaves, and the three objectives (multi-stage, now-or-never, wait-and-see is
skipped: one solve per leaf). Trees whose last decision date is past the horizon are skipped.
Times include model building (Pyomo) and HiGHS; scenario generation and economics are listed apart.
Every decision date after the first is a recourse date, as in the tree analysis (sell, move, idle or
restart racks there: optimizer.multistage.with_recourse_at); `lives` is the lifecycles per rack group
(total over groups). `--compare-recourse` adds each tree's row without recourse (conversions only).
Prints the machine's load average and core count first: the figures are wall times on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.fleet import load_fleet  # noqa: E402
from optimizer.lifecycles import plan_grid  # noqa: E402
from optimizer.multistage import with_recourse_at  # noqa: E402
from optimizer.option_value import solve_tree  # noqa: E402
from optimizer.tree import build_tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=Path, default=ROOT / "examples" / "pivot.yaml")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--trees", default="0,6:3 0,6,12:3 0,6,12:4 0,6,12,24:3")
    parser.add_argument("--compare-recourse", action="store_true", help="also solve each tree without recourse")
    args = parser.parse_args()
    fleet = load_fleet(args.fleet)
    print(f"fleet {fleet.name}: {fleet.horizon.days} days of {fleet.horizon.step_hours} h steps")
    one, five, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores; load average {one:.2f} (1 min), {five:.2f} (5 min)")
    header = (
        f"{'tree':<16}{'lives':>6}{'nodes':>6}{'leaves':>7} | {'multi vars':>10}{'ints':>7}{'rows':>8}{'time s':>8}"
        f" | {'2-stage vars':>12}{'ints':>6}{'rows':>7}{'time s':>8} | {'paths+econ s':>12}"
        f" | {'multi $':>14}{'now-or-never $':>16}{'wait value $':>14}"
    )
    print(header)
    print("-" * len(header))
    for spec in args.trees.split():
        months_text, k = spec.split(":")
        months = [float(m) for m in months_text.split(",")]
        if months[-1] * 30.4375 >= fleet.horizon.days:
            print(f"{spec:<16} skipped: a decision date past the horizon")
            continue
        tree = build_tree(months, int(k), fleet.horizon.step_hours, fleet.horizon.n_steps)
        variants = [(spec, with_recourse_at(fleet, months))]
        if args.compare_recourse:
            variants.append(("  no recourse", fleet))
        for label, planned in variants:
            print_row(label, planned, tree, args.time_limit)


def print_row(label: str, fleet, tree, time_limit_s: float) -> None:
    lives = sum(len(options) for options in plan_grid(fleet).lifecycles)
    start = time.perf_counter()
    solution = solve_tree(fleet, tree, fleet.scenarios.seed, time_limit_s=time_limit_s, wait_and_see=False)
    wall = time.perf_counter() - start
    m, n, t = solution.multistage_size, solution.now_or_never_size, solution.timings_s
    print(
        f"{label:<16}{lives:>6}{tree.n_nodes:>6}{tree.n_leaves:>7} | {m.variables:>10}{m.integer_variables:>7}"
        f"{m.constraints:>8}{t['multistage']:>8.2f} | {n.variables:>12}{n.integer_variables:>6}"
        f"{n.constraints:>7}{t['now_or_never']:>8.2f} | {t['scenarios_and_economics']:>12.2f}"
        f" | {solution.multistage_usd:>14,.0f}{solution.now_or_never_usd:>16,.0f}"
        f"{solution.value_of_waiting_usd:>14,.0f}   (total {wall:.1f} s)"
    )


if __name__ == "__main__":
    main()
