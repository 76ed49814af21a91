"""The pipeline at the machine's limits (issue 13): start-up, economics, the hand-off to HiGHS, peak memory.

Prints, side by side in one run, each figure with the machine's load when it was taken:
1. start-up: `hashpivot plan examples/tiny.yaml --no-robustness` against `python -c "import numpy,
   pyomo.environ"` (interleaved runs, median and best; target: within 2x), and the same tiny plan
   forced onto an embedded Ray for reference;
2. economics against one numpy pass over the same scenario arrays: SLOT for the lead's figures;
3. build + load against the HiGHS run on examples/fleet.yaml at 200 and 1,000 scenarios: Pyomo
   build, matrix compile (standard form) and passModel, against HiGHS's own run time; next to it,
   what loading the same model through Pyomo's HiGHS interface (set_instance) took, the path replaced;
4. peak memory of the whole process tree (driver + Ray's processes and workers: psutil, RSS summed
   over the tree, sampled every 50 ms) planning examples/fleet.yaml at 1,000 scenarios, in-process
   and on an embedded Ray.

    .venv/bin/python bench/bench_pipeline.py [--quick] [--repeats 5] [--scenarios 200 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import psutil
from common import ROOT, timed

PYTHON = sys.executable
HASHPIVOT = str(ROOT / ".venv" / "bin" / "hashpivot")
TINY = str(ROOT / "examples" / "tiny.yaml")
EXAMPLE = str(ROOT / "examples" / "fleet.yaml")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cores"


def machine() -> str:
    mem = psutil.virtual_memory()
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {mem.total / 2**30:.1f} GiB "
        f"({mem.available / 2**30:.1f} free), Python {platform.python_version()}, {load()}"
    )


def wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


# ---------------------------------------------------------------------------------------------
# 1. start-up


def startup(repeats: int, out_dir: str, with_ray: bool) -> None:
    print(f"\n[1] start-up ({repeats} interleaved runs each; {load()})")
    bare_cmd = [PYTHON, "-c", "import numpy, pyomo.environ"]
    plan_cmd = [HASHPIVOT, "plan", TINY, "--no-robustness", "--out", out_dir]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    wall(bare_cmd, env), wall(plan_cmd, env)  # warm the file cache and the bytecode
    bare, plan = [], []
    for _ in range(repeats):
        bare.append(wall(bare_cmd, env))
        plan.append(wall(plan_cmd, env))
    print(f"  {'':44s} {'median':>8s} {'best':>8s}")
    rows = (("python -c 'import numpy, pyomo.environ'", bare), ("hashpivot plan tiny.yaml --no-robustness", plan))
    for label, runs in rows:
        print(f"  {label:44s} {statistics.median(runs):7.2f}s {min(runs):7.2f}s")
    ratio_med = statistics.median(plan) / statistics.median(bare)
    ratio_best = min(plan) / min(bare)
    verdict = "OK" if ratio_med <= 2 else "ABOVE TARGET"
    print(f"  ratio plan / bare imports: median {ratio_med:.2f}x, best {ratio_best:.2f}x (target <= 2x: {verdict})")
    if with_ray:
        code = (
            "from optimizer.fleet import load_fleet; from solvers.planner import plan_fleet; "
            f"plan_fleet(load_fleet({TINY!r}), local=False)"
        )
        ray_s = wall([PYTHON, "-c", code], env)
        print(f"  {'same tiny plan forced onto an embedded Ray':44s} {ray_s:7.2f}s  ({load()})")


# ---------------------------------------------------------------------------------------------
# 2. economics vs the one-pass numpy limit (issue 13 item 2, the lead's)


def economics_slot() -> None:
    print("\n[2] economics vs one numpy pass over the same scenario arrays")
    print("  SLOT: the lead's figures (issue 13 item 2, flat-memory economics) go here:")
    print("        1,000 groups x 1,000 scenarios hourly; 300 groups x 200 scenarios at 15 minutes;")
    print("        economics s | one-pass numpy s | ratio (target <= 3x) | peak MiB per Ray task (target < 512)")


# ---------------------------------------------------------------------------------------------
# 3. build + load vs the HiGHS run


def handoff(counts: list[int], old_interface: bool) -> None:
    import highspy
    from pyomo.contrib.solver.common.factory import SolverFactory

    from optimizer.fleet import load_fleet
    from optimizer.formulation import build_compact_model
    from solvers import highs as hp
    from solvers import ray_pool
    from solvers.limits import resolved_time_limit_s
    from solvers.planner import ScenarioSpec, compute_economics

    fleet = load_fleet(EXAMPLE)
    print(f"\n[3] build + load vs HiGHS run: examples/fleet.yaml ({len(fleet.rack_groups)} groups, events, mean-CVaR)")
    header = (
        f"  {'scen':>5s} {'vars':>7s} {'rows':>7s} {'build':>7s} {'compile':>8s} {'pass':>6s} "
        f"{'b+l':>7s} {'run':>7s} {'(b+l)/run':>9s} {'Pyomo-if load':>13s}  status, gap, load"
    )
    print(header)
    for count in counts:
        with ray_pool.in_process():
            economics, _ = compute_economics(fleet, ScenarioSpec(count=count, seed=fleet.scenarios.seed), 50)
        model, build_s = timed(lambda e=economics: build_compact_model(fleet, e, fleet.risk))
        matrix, compile_s = timed(lambda m=model: hp.to_matrix(m))
        limit = resolved_time_limit_s(fleet.solver, fleet, economics)
        solver, pass_s = timed(lambda mx=matrix, t=limit: hp._load(mx, t, fleet.solver.mip_rel_gap, 1, None))
        solver.run()
        run_s = solver.getRunTime()
        status = solver.getModelStatus()
        info = solver.getInfo()
        gap = hp.relative_gap(info.objective_function_value, info.mip_dual_bound)
        load_s = compile_s + pass_s
        old = "-"
        if old_interface:
            pyomo_highs = SolverFactory("highs")
            _, set_s = timed(lambda m=model, s=pyomo_highs: s.set_instance(m))
            old = f"{set_s:12.2f}s"
        status_name = highspy.HighsModelStatus(status).name if not isinstance(status, str) else status
        print(
            f"  {count:5d} {matrix.n_cols:7d} {matrix.n_rows:7d} {build_s:6.2f}s {compile_s:7.2f}s {pass_s:5.2f}s "
            f"{build_s + load_s:6.2f}s {run_s:6.2f}s {(build_s + load_s) / run_s:8.2f}x {old:>13s}  "
            f"{status_name}, {gap:.1e}, {load()}"
        )
        print(f"        load alone (compile + pass) / run: {load_s / run_s:.2f}x")
        del model, matrix, solver, economics


# ---------------------------------------------------------------------------------------------
# 4. peak memory of the process tree


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    total, count = 0, 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, count


def peak_tree(cmd: list[str], env: dict, capture: bool = False):
    """Run `cmd`; sample the RSS summed over it and all its descendants every 50 ms; (wall s, peak GiB, max procs),
    and its standard output when `capture`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak, most = 0, 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, most
        while not stop.is_set():
            rss, count = tree_rss(root)
            peak, most = max(peak, rss), max(most, count)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    elapsed = time.perf_counter() - start
    return (elapsed, peak / 2**30, most, out) if capture else (elapsed, peak / 2**30, most)


def memory(count: int) -> None:
    print(f"\n[4] peak memory of the process tree: examples/fleet.yaml at {count:,} scenarios, plan only")
    print("    (RSS summed over the driver and every descendant: Ray's GCS, raylet, agents and workers;")
    print("     pages shared between processes, e.g. the object store, count once per process)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for label, local in (("in-process", True), ("embedded Ray", False)):
        code = (
            "from optimizer.fleet import load_fleet, with_overrides; from solvers.planner import plan_fleet; "
            f"f = with_overrides(load_fleet({EXAMPLE!r}), {{'scenarios': {{'count': {count}}}}}); "
            f"p, _ = plan_fleet(f, local={local}); print(p.solver.status, p.timings_s['total_s'])"
        )
        wall_s, peak_gib, procs = peak_tree([PYTHON, "-c", code], env)
        print(f"  {label:14s} wall {wall_s:6.1f}s  peak tree RSS {peak_gib:5.2f} GiB, <= {procs} processes ({load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 start-up runs, 200 scenarios only, no Ray references")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--memory-scenarios", type=int, default=1000)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.scenarios = 3, [200]
    print(f"hashpivot pipeline bench: {machine()}")
    out_dir = "/tmp/hashpivot-bench-pipeline"
    startup(args.repeats, out_dir, with_ray=not args.quick)
    economics_slot()
    handoff(args.scenarios, old_interface=True)
    if not args.quick:
        memory(args.memory_scenarios)
    print(f"\ndone ({load()})")


if __name__ == "__main__":
    main()
