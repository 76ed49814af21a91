"""The pivot over the life of a deal (issue 8): the five-year hourly plan of examples/fleet.yaml against
its one-quarter plan, side by side in one run.

For each case, in a fresh process on an embedded Ray (2 workers): scenario economics (draw and price,
streamed in chunks, on Ray), model build, solve, the solver's status and gap, the model's size, and
the peak memory of the whole process tree (driver, Ray's processes and workers: PSS summed, so the
shared object store counts once, sampled every 50 ms; bench_pipeline.peak_tree, bench/common.py).
The last lines give the ratios five years / one quarter.

    .venv/bin/python bench/bench_horizon.py [--scenarios 200 1000] [--time-limit 900]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench_pipeline import load, machine, peak_tree
from common import ROOT

EXAMPLE = str(ROOT / "examples" / "fleet.yaml")


def run(days: int | None, count: int, time_limit_s: float) -> dict:
    horizon = "{}" if days is None else f"{{'days': {days}}}"
    code = (
        "import json; from optimizer.fleet import load_fleet, with_overrides; from solvers.planner import plan_fleet; "
        f"f = with_overrides(load_fleet({EXAMPLE!r}), {{'scenarios': {{'count': {count}}}, 'horizon': {horizon}, "
        f"'solver': {{'time_limit_s': {time_limit_s}}}}}); "
        "p, _ = plan_fleet(f, local=False); "
        "print(json.dumps({'t': p.timings_s, 's': p.solver.model_dump(), 'npv': p.profit['mean_usd'], "
        "'days': f.horizon.days}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    wall_s, peak_gib, procs, out = peak_tree([sys.executable, "-c", code], env, capture=True)
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": wall_s, "peak_gib": peak_gib, "procs": procs, **result}


def line(label: str, r: dict) -> str:
    t, s = r["t"], r["s"]
    return (
        f"  {label:22s} economics {t['scenarios_s']:6.1f}s  build {t['model_build_s']:5.1f}s"
        f"  solve {t['solve_s']:6.1f}s"
        f"  ({s['status']}, gap {s['mip_gap']:.1e}, {s['variables']:,} vars)  wall {r['wall_s']:6.1f}s"
        f"  peak tree {r['peak_gib']:.2f} GiB  NPV ${r['npv'] / 1e6:,.1f}M"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--time-limit", type=float, default=900.0, help="solver time limit per case, seconds")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for count in args.scenarios:
        quarter = run(91, count, args.time_limit)
        print(f"\n{count:,} scenarios ({load()})")
        print(line("one quarter (91 days)", quarter))
        years = run(None, count, args.time_limit)
        print(line(f"five years ({years['days']} days)", years))
        print(
            f"  ratios five years / quarter: economics {years['t']['scenarios_s'] / quarter['t']['scenarios_s']:.1f}x,"
            f" steps {years['days'] / 91:.1f}x, peak memory {years['peak_gib'] / quarter['peak_gib']:.2f}x"
            " (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
