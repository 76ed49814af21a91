"""The tree analysis in one process against its tasks on Ray (independent trees, fresh trees, rolling re-solves).

    .venv/bin/python bench/bench_tree_ray.py [--fleet examples/pivot.yaml] [--dates 0,6,12] [--branching 3]
        [--replications 4] [--oos-trees 2] [--workers 2]

Runs solvers.tree_plan.plan_tree twice, each in a fresh process: every task here (local=True), then on an
embedded Ray with `--workers` tasks at once (local=False; Ray's start-up is inside the wall time). Prints
each run's wall time, its stages (the plan's tree, its wait-and-see leaves, the independent trees, the
rolling out-of-sample, the rest: imports, Ray's start-up, the plan's tree's paths),
the peak memory of the whole process tree (driver, Ray's processes and workers: RSS summed, sampled every
50 ms; bench_pipeline.peak_tree), the ratios, and whether the two runs report the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench_pipeline import load, machine, peak_tree
from common import ROOT


def run(args: argparse.Namespace, local: bool) -> dict:
    tree = {
        "decision_months": [float(m) for m in args.dates.split(",")],
        "branching": [args.branching],
        "replications": args.replications,
        "out_of_sample_trees": args.oos_trees,
    }
    code = (
        "import json; from optimizer.fleet import load_fleet, with_overrides; from solvers.tree_plan import plan_tree; "
        f"f = with_overrides(load_fleet({str(args.fleet)!r}), {{'tree': {tree!r}}}); "
        f"r = plan_tree(f, workers={args.workers}, local={local}); "
        "print(json.dumps({'t': r.timings_s, 'vw': r.value_of_waiting.replications_usd, "
        "'oos': r.out_of_sample_value_of_waiting.replications_usd, 'multi': r.multistage_usd, 'nodes': r.nodes}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    wall_s, peak_gib, procs, out = peak_tree([sys.executable, "-c", code], env, capture=True)
    return {"wall_s": wall_s, "peak_gib": peak_gib, "procs": procs, **json.loads(out.strip().splitlines()[-1])}


def line(label: str, r: dict) -> str:
    t = r["t"]
    stages = {
        "plan's tree": t["multistage"] + t["now_or_never"],
        "wait-and-see": t.get("wait_and_see", 0.0),
        "independent trees": t["replications_wall"],
        "rolling oos": t["rolling_out_of_sample"],
    }
    rest = r["wall_s"] - sum(stages.values())
    parts = "  ".join(f"{name} {seconds:5.1f} s" for name, seconds in stages.items())
    return (
        f"  {label:26s} wall {r['wall_s']:6.1f} s | {parts}  rest (imports, Ray start, paths) {rest:5.1f} s"
        f" | peak tree {r['peak_gib']:.2f} GiB, {r['procs']} processes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", default=str(ROOT / "examples" / "pivot.yaml"))
    parser.add_argument("--dates", default="0,6,12")
    parser.add_argument("--branching", type=int, default=3)
    parser.add_argument("--replications", type=int, default=4)
    parser.add_argument("--oos-trees", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"tree {args.dates} x{args.branching}, {args.replications} independent trees, "
        f"{args.oos_trees} fresh trees (rolling re-solve at every node)"
    )
    here = run(args, local=True)
    print(f"  ({load()})")
    print(line("in one process", here))
    ray = run(args, local=False)
    print(f"  ({load()})")
    print(line(f"on Ray, {args.workers} workers", ray))
    print(
        f"  Ray / in-process: wall {ray['wall_s'] / here['wall_s']:.2f}x, "
        f"independent trees {ray['t']['replications_wall'] / here['t']['replications_wall']:.2f}x, "
        f"rolling oos {ray['t']['rolling_out_of_sample'] / here['t']['rolling_out_of_sample']:.2f}x, "
        f"peak memory {ray['peak_gib'] / here['peak_gib']:.2f}x"
    )
    same = all(here[k] == ray[k] for k in ("vw", "oos", "multi"))
    print(f"  same value of waiting per tree, out-of-sample differences and plan: {same}")


if __name__ == "__main__":
    main()
