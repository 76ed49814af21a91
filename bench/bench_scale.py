"""Fleet scale: monolithic MIP vs exact decomposition (issue 10), side by side in one run.

    .venv/bin/python bench/bench_scale.py            # every case (tens of minutes on 2 shared cores)
    .venv/bin/python bench/bench_scale.py --quick    # smaller counts, same shape of table

Cases, hourly steps over one quarter (the horizon of the issue's table), mean-CVaR as in the example:
  A  the example fleet, events removed, 2,000 scenarios
  B  1,000 synthetic rack groups (the example's groups split 125 ways), no events, 1,000 scenarios
  C  300 synthetic rack groups with the example's events and DR, four times as frequent, 200 scenarios
  D  1,000 groups x 10,000 scenarios, decomposition only
  S  speedup of 2 workers over 1 on the decomposition's scenario work (B's fleet, 2,000 scenarios), beside
     the same ratio for pure-CPU Ray tasks (the machine's own ceiling)

Each (case, method) runs end to end (scenarios and economics on an embedded Ray, build, solve, the plan's
report) in a fresh child process; the parent samples the memory of the child's whole process tree (driver,
raylet, Ray workers; PSS by bench/common.tree_memory, so the shared object store counts once; every
0.2 s) and reports its peak, and the driver's own.
The decomposition keeps the economics in the object store batch by batch and
assembles the report from per-batch sums (optimizer/report_sums.py); the monolithic MIP gathers every
scenario into the driver. `auto` shows what the rule would pick. Every method is asked the same relative
gap (`--gap`, default BENCH_GAP; the example fleet itself asks 1e-4).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MONOLITHIC_LIMIT_S = 300.0  # --time-limit: a monolithic solve past it reports its gap
BENCH_GAP = 1e-6  # --gap: solver.mip_rel_gap asked of both methods (the figures were taken at it)


def synthetic_fleet(groups: int, events: bool, scale_events: float = 1.0):
    """The example fleet over one quarter, its rack groups split into `groups` groups of varied opex."""
    import yaml

    from optimizer.fleet import parse_fleet

    data = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    data["horizon"] = {"start": data["horizon"]["start"], "days": 91, "step_hours": 1}
    for market in data["markets"]:
        if not events:
            market.pop("curtailment_events", None)
            market.pop("demand_response_calls", None)
        else:
            for event in market.get("curtailment_events", []):
                event["events_per_year"] = event["events_per_year"] * scale_events
            if "demand_response_calls" in market:
                market["demand_response_calls"]["calls_per_year"] *= scale_events
    if not events:
        for site in data["sites"]:
            site.pop("demand_response", None)
    if groups:
        base = data["rack_groups"]
        per = groups // len(base)
        extra = groups - per * len(base)
        out = []
        for i, group in enumerate(base):
            n = per + (1 if i < extra else 0)
            racks = [group["racks"] // n + (1 if j < group["racks"] % n else 0) for j in range(n)]
            for j in range(n):
                g = copy.deepcopy(group)
                g["id"] = f"{group['id']}-{j:03d}"
                g["racks"] = max(1, racks[j])
                g["opex_usd_per_rack_day"] = round(group["opex_usd_per_rack_day"] * (0.8 + 0.4 * j / max(1, n - 1)), 3)
                out.append(g)
        data["rack_groups"] = out
    return parse_fleet(data)


CASES = {
    "A": {"label": "example, no events", "groups": 0, "events": False, "scenarios": 2000},
    "B": {"label": "1,000 groups, no events", "groups": 1000, "events": False, "scenarios": 1000},
    "C": {"label": "300 groups, events + DR", "groups": 300, "events": True, "scenarios": 200, "scale": 4.0},
    "D": {"label": "1,000 groups, no events", "groups": 1000, "events": False, "scenarios": 10000},
}
QUICK = {"A": 400, "B": 200, "C": 50, "D": 2000}


def child(case: str, method: str, scenarios: int, time_limit_s: float, gap: float = BENCH_GAP) -> dict:
    """One end-to-end plan in this process (embedded Ray, 2 CPUs); prints a JSON line."""
    from optimizer.fleet import SolveMethod, with_overrides
    from solvers.decomposition import choose_method, scenario_nonzeros
    from solvers.planner import ScenarioSpec, assemble_plan, compute_economics, economics_batches, solve_allocation
    from solvers.ray_pool import ensure_ray, in_process

    spec = CASES[case]
    fleet = synthetic_fleet(spec["groups"], spec["events"], spec.get("scale", 1.0))
    fleet = with_overrides(
        fleet,
        {
            "scenarios": {"count": scenarios, "batch_size": 100},
            "solver": {"method": method, "time_limit_s": time_limit_s, "mip_rel_gap": gap},
        },
    )
    ensure_ray(num_cpus=2)
    start = time.perf_counter()
    spec = ScenarioSpec(count=scenarios, seed=fleet.scenarios.seed)
    if method == "monolithic":
        economics, _ = compute_economics(fleet, spec, 100)
    else:  # the batches stay in the object store: the driver never holds every scenario
        economics = economics_batches(fleet, spec, 100)
    economics_s = time.perf_counter() - start
    auto = choose_method(fleet, economics, SolveMethod.AUTO).value  # what auto would pick, not the method run
    with in_process(False):
        solved = solve_allocation(fleet, economics, fleet.risk, fleet.solver)
        report_start = time.perf_counter()
        assemble_plan(fleet, economics, solved, spec, "generated")
    total_s = time.perf_counter() - start
    return {
        "case": case,
        "method": method,
        "groups": len(fleet.rack_groups),
        "scenarios": scenarios,
        "coupled": economics.n_coupled,
        "nonzeros": scenario_nonzeros(fleet, economics),
        "auto": auto,
        "economics_s": economics_s,
        "build_s": solved.build_s,
        "solve_s": solved.outcome.wall_s,
        "report_s": total_s - (report_start - start),
        "total_s": total_s,
        "status": solved.outcome.status,
        "objective": solved.outcome.objective_usd,
        "bound": solved.outcome.bound_usd,
        "gap": solved.outcome.mip_gap,
        "variables": solved.variables,
        "constraints": solved.constraints,
    }


def child_speedup(scenarios: int) -> dict:
    """Decomposition scenario work (preparation, evaluations, cut sums) with 1 and 2 workers, best of two each."""
    from optimizer.fleet import with_overrides
    from solvers.decomposition import solve_decomposition
    from solvers.planner import ScenarioSpec, compute_economics
    from solvers.ray_pool import ensure_ray

    fleet = synthetic_fleet(1000, False)
    # a loose gap: the master converges in a few iterations; what is timed is the scenario work
    fleet = with_overrides(
        fleet, {"scenarios": {"count": scenarios, "batch_size": 100}, "solver": {"mip_rel_gap": 1e-3}}
    )
    ensure_ray(num_cpus=2)
    economics, _ = compute_economics(fleet, ScenarioSpec(count=scenarios, seed=fleet.scenarios.seed), 100)
    out = {"case": "S", "scenarios": scenarios}
    results = {}
    # alternated and repeated, each count's best kept: the first run of a count also pays for starting and
    # importing into Ray workers it has not used yet, which is start-up, not scenario work
    for workers in (1, 2, 1, 2):
        result = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 600, workers=workers)
        results[workers] = result
        key = f"scenario_s_{workers}"
        out[key] = min(out.get(key, math.inf), result.report.scenario_s)
        out[f"iterations_{workers}"] = result.report.iterations
    out["same_plan"] = bool((results[1].y == results[2].y).all())
    out["speedup"] = out["scenario_s_1"] / out["scenario_s_2"]
    out["cpu_speedup"] = cpu_task_speedup()
    return out


def _burn(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i
    return total


def cpu_task_speedup(tasks: int = 8, loops: int = 3_000_000) -> float:
    """What 2 workers give over 1 on this machine for pure-CPU Ray tasks (a Python loop, ~0.15 s each,
    best of two each): the ceiling the scenario work's speedup is measured against."""
    from solvers.ray_pool import fan_out, lazy_remote

    burn = lazy_remote(num_cpus=1)(_burn)
    best = {}
    for workers in (1, 2, 1, 2):
        start = time.perf_counter()
        fan_out(burn, [(loops,)] * tasks, workers)
        best[workers] = min(best.get(workers, math.inf), time.perf_counter() - start)
    return best[1] / best[2]


def run_child(args: list[str]) -> tuple[dict | None, float, float]:
    """Run a child, sample its process tree's PSS (common.tree_memory); (its JSON with the driver's peak GiB,
    the tree's peak GiB, wall s)."""
    from common import run_sampled, tree_memory

    peak, driver = [0], [0]

    def sample(pid: int) -> None:
        rows = tree_memory(pid)  # the child itself first
        if rows:
            driver[0] = max(driver[0], rows[0][1])
        peak[0] = max(peak[0], sum(pss for _, pss, _ in rows))

    code, out, err, wall = run_sampled([sys.executable, __file__, *args], sample, 0.2, cwd=ROOT)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        print(f"  child {args} failed ({code}): {err.strip().splitlines()[-3:]}", file=sys.stderr)
        return None, peak[0] / 2**30, wall
    return {**json.loads(lines[-1]), "driver_gib": driver[0] / 2**30}, peak[0] / 2**30, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scenario counts")
    parser.add_argument("--cases", default="ACBDS")
    parser.add_argument("--time-limit", type=float, default=MONOLITHIC_LIMIT_S, help="solver time limit, s")
    parser.add_argument("--gap", type=float, default=BENCH_GAP, help="solver.mip_rel_gap of every method")
    parser.add_argument("--monolithic", default="ABC", help="cases that also run the monolithic MIP")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "METHOD", "SCENARIOS"), help=argparse.SUPPRESS)
    parser.add_argument("--child-speedup", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    if not (args.child or args.child_speedup):
        print(f"machine: {os_cpus()} cores, {total_gib():.0f} GiB; load average at start {' '.join(load)}")
    if args.child:
        case, method, count = args.child
        print(json.dumps(child(case, method, int(count), args.time_limit, args.gap)), flush=True)
        return
    if args.child_speedup:
        print(json.dumps(child_speedup(args.child_speedup)), flush=True)
        return

    header = (
        f"{'case':<28} {'scen':>6} {'method':<13} {'auto':<13} {'econ s':>7} {'build s':>8} {'solve s':>8} "
        f"{'report s':>8} {'total s':>8} {'peak GiB':>8} {'driver':>6} {'status':<10} {'gap':>8} "
        f"{'objective USD':>16} {'vars':>8}"
    )
    print(f"every method asked a relative gap of {args.gap:g} (solver.mip_rel_gap)")
    print(header)
    print("-" * len(header), flush=True)
    totals: dict[tuple[str, str], dict] = {}
    for case in args.cases:
        if case == "S":
            continue
        spec = CASES[case]
        count = QUICK[case] if args.quick else spec["scenarios"]
        methods = ["monolithic", "decomposition"] if case in args.monolithic and case != "D" else ["decomposition"]
        for method in methods:
            limits = ["--time-limit", str(args.time_limit), "--gap", str(args.gap)]
            row, peak, _ = run_child(["--child", case, method, str(count), *limits])
            if row is None:
                print(f"{spec['label']:<28} {count:>6} {method:<13} failed (see stderr); peak {peak:.2f} GiB")
                continue
            print(
                f"{spec['label']:<28} {count:>6} {method:<13} {row['auto']:<13} {row['economics_s']:>7.1f} "
                f"{row['build_s']:>8.1f} {row['solve_s']:>8.1f} {row['report_s']:>8.1f} {row['total_s']:>8.1f} "
                f"{peak:>8.2f} {row['driver_gib']:>6.2f} "
                f"{row['status']:<10} {row['gap']:>8.1e} {row['objective']:>16,.0f} {row['variables']:>8}",
                flush=True,
            )
            totals[(case, method)] = row
    for case in args.cases:
        if (case, "monolithic") in totals and (case, "decomposition") in totals:
            mono, deco = totals[(case, "monolithic")], totals[(case, "decomposition")]
            ratio = mono["total_s"] / deco["total_s"]
            if mono["status"] == "optimal":
                print(f"{CASES[case]['label']}: decomposition {ratio:.1f}x faster than monolithic end to end")
            else:  # the monolithic run was cut short: its time is a lower bound of what it needs
                print(
                    f"{CASES[case]['label']}: decomposition at least {ratio:.1f}x faster than monolithic end to end "
                    f"(monolithic stopped: {mono['status']}, gap {mono['gap']:.1e}; decomposition {deco['status']}, "
                    f"gap {deco['gap']:.1e})"
                )
    if "S" in args.cases:
        count = 400 if args.quick else 2000
        row, peak, _ = run_child(["--child-speedup", str(count)])
        if row is not None:
            print(
                f"\nscenario work, 1,000 groups x {count} scenarios: 1 worker {row['scenario_s_1']:.2f} s, "
                f"2 workers {row['scenario_s_2']:.2f} s, speedup {row['speedup']:.2f}x "
                f"(iterations {row['iterations_1']}/{row['iterations_2']}, same plan: {row['same_plan']}); "
                f"peak {peak:.2f} GiB; pure-CPU Ray tasks, the same two counts: {row['cpu_speedup']:.2f}x"
            )
    print(f"load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def os_cpus() -> int:
    import os

    return os.cpu_count() or 1


def total_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    main()
