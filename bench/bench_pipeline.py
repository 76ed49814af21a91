"""The pipeline at the machine's limits (issue 13): start-up, economics, the hand-off to HiGHS, peak memory.

Prints, side by side in one run, each figure with the machine's load when it was taken:
1. start-up: `hashpivot plan examples/tiny.yaml --no-robustness` against `python -c "import numpy,
   pyomo.environ"` (interleaved runs, median and best; target: within 2x), and the same tiny plan
   forced onto an embedded Ray for reference;
2. economics against one numpy pass over the same scenario arrays (ratio; target within 3x), the kernel per
   chunk and as a Ray task runs it (batches of the fleet's batch_size, outputs kept and joined), peak memory
   of one Ray task (target < 512 MiB) and of the process tree (1,000 groups x 1,000 scenarios hourly,
   target < 3 GiB; 300 groups x 200 scenarios at 15 minutes), and the value of 15-minute dispatch over
   hourly dispatch on the same paths averaged to hours (synthetic fleets on examples/fleet.yaml's markets);
3. build + load against the HiGHS run on examples/fleet.yaml at 200 and 1,000 scenarios: Pyomo
   build, matrix compile (standard form) and passModel, against HiGHS's own run time; next to it,
   what loading the same model through Pyomo's HiGHS interface (set_instance) took, the path replaced;
4. peak memory of the whole process tree (driver + Ray's processes and workers: psutil PSS summed
   over the tree, so the shared object store counts once, sampled every 50 ms; bench/common.py) planning
   examples/fleet.yaml at 1,000 scenarios, in-process and on an embedded Ray.

    .venv/bin/python bench/bench_pipeline.py [--quick] [--repeats 5] [--scenarios 200 1000] [--sections 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import psutil
from common import ROOT, run_sampled, timed, tree_memory

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
    # PYTHONDONTWRITEBYTECODE (set in some shells) would make every run of this editable checkout compile the
    # project's ~40 modules from source again (~0.15 s); an installed package has its bytecode, as the bare
    # imports' site-packages have theirs. The warm-up runs write it.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONDONTWRITEBYTECODE")}
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
# 2. economics vs the one-pass numpy limit, peak memory of a Ray task and of the process tree (item 2),
#    and the value of 15-minute dispatch over hourly on the same paths (item 1)


def synthetic_fleet(
    groups: int, scenarios: int, step_minutes: int = 60, days: int = 91, example: bool = False, events: bool = True
):
    """examples/fleet.yaml's markets, sites, offers and risk with `groups` synthetic rack groups over its four
    sites (machines, rack sizes and opex varied so every group is its own profile); no moves or purchases
    (each would multiply the profiles); a quarter from 2026-12-01, so the winter events and calls fall inside.
    `events=False` drops the markets' curtailment events and demand-response calls: every step separable."""
    from optimizer.fleet import load_fleet, parse_fleet

    data = load_fleet(EXAMPLE).model_dump(mode="json", exclude_none=True)
    if not events:
        for market in data["markets"]:
            market["curtailment_events"] = []
            market.pop("demand_response_calls", None)
        for site in data["sites"]:
            site.pop("demand_response", None)
    if not example:
        data.pop("moves", None)
        data["purchases"] = []
        machines = [m["id"] for m in data["machines"]]
        sites = data["sites"]
        data["rack_groups"] = [
            {
                "id": f"g{i:04d}",
                "site": sites[i % len(sites)]["id"],
                "machine": machines[(i // len(sites)) % len(machines)],
                "racks": 2,
                "machines_per_rack": 4 + i % 7,
                "opex_usd_per_rack_day": 2.0 + 0.01 * (i % 97),
                "convertible": "ai" in sites[i % len(sites)],
            }
            for i in range(groups)
        ]
    data["horizon"] = {"start": "2026-12-01", "days": days, "step_minutes": step_minutes}
    data["scenarios"] = {**data["scenarios"], "count": scenarios}
    return parse_fleet(data)


def scenario_arrays(chunk) -> list:
    """Every array of a chunk the economics reads: hashprice, BTC price, subsidy, and per market spot, the
    share of capacity sites may draw (events) and demand-response calls."""
    arrays = [chunk.hashprice_usd_per_ph_day, chunk.btc_price_usd, chunk.subsidy_btc, chunk.power_price_usd_per_mwh]
    return arrays + [a for a in (chunk.available_power_fraction, chunk.dr_call) if a is not None]


def one_pass_s(chunks) -> float:
    """One numpy pass over the same scenario arrays, each element read once: every float array summed (a
    vectorised reduction, no temporary), every bool array counted. The bandwidth limit: no economics can
    price a chunk without reading these bytes at least once."""
    start = time.process_time()
    total = 0.0
    for chunk in chunks:
        for values in scenario_arrays(chunk):
            total += float(np.count_nonzero(values) if values.dtype == bool else np.add.reduce(values, axis=None))
    return time.process_time() - start


def product_pass_s(chunks) -> float:
    """The denominator of earlier figures, for comparison: (spot x hashprice).sum() per market, which writes
    and reads a temporary [S, T] product, plus the other arrays summed (bool arrays as integers)."""
    start = time.process_time()
    total = 0.0
    for sc in chunks:
        hp = sc.hashprice_usd_per_ph_day
        for m in range(len(sc.markets)):
            total += float((sc.power_price_usd_per_mwh[m] * hp).sum())
        total += float(sc.btc_price_usd.sum()) + float(sc.subsidy_btc.sum())
        if sc.available_power_fraction is not None:
            total += float(sc.available_power_fraction.sum())
        if sc.dr_call is not None:
            total += float(sc.dr_call.sum())
    return time.process_time() - start


def task_economics_s(fleet, grid, chunks, batch_size: int) -> float:
    """The kernel as a Ray task runs it (solvers.planner.streamed_economics, scenarios already drawn): per batch of
    `batch_size` scenarios, its chunks priced and kept, then joined (concat_economics); the batch's result dropped
    before the next, as a worker hands it to the object store. Chunks of the same scenario arrays as `chunks`."""
    from optimizer.economics import concat_economics, group_economics
    from optimizer.scenarios import select_rows
    from solvers.planner import STREAM_CELLS

    per_chunk = max(1, STREAM_CELLS // fleet.horizon.n_steps)
    rows = [(chunk, r) for chunk in chunks for r in range(chunk.n_scenarios)]
    batches = [rows[a : a + batch_size] for a in range(0, len(rows), batch_size)]
    task_chunks = []
    for batch in batches:  # the batch's chunks, cut from the same arrays before the clock starts
        parts = [batch[a : a + per_chunk] for a in range(0, len(batch), per_chunk)]
        task_chunks.append([_rows_of(part, select_rows) for part in parts])
    start = time.process_time()
    for batch in task_chunks:
        result = concat_economics([group_economics(fleet, c, grid, kernel=True) for c in batch])
        del result
    return time.process_time() - start


def _rows_of(part, select_rows):
    """One contiguous ScenarioSet (as a task draws it) of the (chunk, row) pairs of `part`, consecutive rows of one
    chunk or of two consecutive ones."""
    from optimizer.scenarios import concat_scenarios

    pieces = []
    for chunk in {id(c): c for c, _ in part}.values():
        positions = [r for c, r in part if c is chunk]
        pieces.append(select_rows(chunk, range(positions[0], positions[-1] + 1)))
    return concat_scenarios(pieces)


def economics_vs_limit(groups: int, count: int, step_minutes: int, repeats: int, events: bool = True) -> None:
    from optimizer.economics import group_economics
    from optimizer.lifecycles import plan_grid
    from solvers.planner import STREAM_CELLS, batch_scenarios

    fleet = synthetic_fleet(groups, count, step_minutes, events=events)
    grid = plan_grid(fleet)
    per_chunk = max(1, STREAM_CELLS // fleet.horizon.n_steps)  # the chunks a Ray task streams
    chunks = [
        batch_scenarios(fleet, range(a, min(a + per_chunk, count)), fleet.scenarios.seed, 0, None)
        for a in range(0, count, per_chunk)
    ]
    cells = sum(c.n_scenarios * c.n_steps for c in chunks)
    group_economics(fleet, chunks[0], grid, kernel=True)  # numba's import and first dispatch: timed apart
    econ, limit, product, task = {True: [], False: []}, [], [], []
    for _ in range(repeats):
        limit.append(one_pass_s(chunks))
        product.append(product_pass_s(chunks))
        for kernel in (True, False):
            start = time.process_time()
            for c in chunks:
                group_economics(fleet, c, grid, kernel=kernel)
            econ[kernel].append(time.process_time() - start)
        task.append(task_economics_s(fleet, grid, chunks, fleet.scenarios.batch_size))
        limit.append(one_pass_s(chunks))
    k, n, lim, prod, tk = min(econ[True]), min(econ[False]), min(limit), min(product), min(task)
    verdict = "OK" if k <= 3 * lim else "ABOVE TARGET"
    kind = "events+calls" if events else "separable"
    print(
        f"  {groups:5d} groups x {count:5d} scen, {step_minutes:2d} min, {fleet.horizon.n_steps:5d} steps, "
        f"{kind:12s}: kernel {k:6.3f}s | numpy {n:6.3f}s | one pass {lim:6.3f}s | kernel/one pass {k / lim:5.2f}x "
        f"(target <= 3x: {verdict}), numpy/one pass {n / lim:5.2f}x | kernel {cells / k / 1e6:5.1f} M "
        f"scenario-steps/s | as Ray tasks (batches of {fleet.scenarios.batch_size}, outputs kept and joined) "
        f"{tk:6.3f}s = {tk / lim:5.2f}x | earlier denominator (spot x hashprice product) {prod:6.3f}s: kernel "
        f"{k / prod:5.2f}x ({load()})"
    )


def kernel_fixed_cost() -> None:
    """What the kernel costs once per process: numba's import and the first dispatch (cached machine code), in
    seconds and in resident memory (what it adds to a Ray task)."""
    code = (
        "import time, psutil; p = psutil.Process(); from tests.fleets import random_fleet_data, scenarios_for; "
        "from optimizer.fleet import parse_fleet; from optimizer.economics import group_economics; "
        "f = parse_fleet(random_fleet_data(0, scenarios=2)); s = scenarios_for(f); group_economics(f, s); "
        "m0 = p.memory_info().rss; t1 = time.perf_counter(); import numba; t2 = time.perf_counter(); "
        "group_economics(f, s, kernel=True); t3 = time.perf_counter(); m1 = p.memory_info().rss; "
        "print(f'{t2 - t1:.2f} {t3 - t2:.2f} {(m1 - m0) / 2**20:.0f}')"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, env=env)  # compiles if not cached yet
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    import_s, first_s, rss_mib = done.stdout.split()
    print(
        f"  kernel's fixed cost per process (fresh interpreter, cached machine code): import numba {import_s}s + "
        f"first dispatch {first_s}s, +{rss_mib} MiB resident; economics.KERNEL_MIN_SITE_CELLS sends smaller runs "
        f"to numpy ({load()})"
    )


def tree_peaks(cmd: list[str], env: dict) -> tuple[float, float, float, int, str]:
    """Run `cmd`; (wall s, peak tree PSS GiB, peak RSS MiB of any one Ray worker process while it runs
    the economics task, max procs, worker's name)."""
    peak, most, worker_peak, worker_name = 0, 0, 0, "-"

    def sample(pid: int) -> None:
        nonlocal peak, most, worker_peak, worker_name
        rows = tree_memory(pid)
        for name, _, rss in rows:
            if name.startswith("ray::_economics_batch") and rss > worker_peak:  # a worker's title in the task
                worker_peak, worker_name = rss, name
        peak, most = max(peak, sum(pss for _, pss, _ in rows)), max(most, len(rows))

    code, _, err, wall_s = run_sampled(cmd, sample, 0.05, cwd=ROOT, env=env)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return wall_s, peak / 2**30, worker_peak / 2**20, most, worker_name


def economics_memory(groups: int, count: int, step_minutes: int) -> None:
    """Scenarios and economics of the synthetic fleet on an embedded Ray (2 workers), gathered in the driver."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = (
        "import sys; sys.path.insert(0, 'bench'); from bench_pipeline import synthetic_fleet; "
        "from solvers.planner import ScenarioSpec, compute_economics; from solvers.ray_pool import ensure_ray; "
        f"f = synthetic_fleet({groups}, {count}, {step_minutes}); ensure_ray(); "
        f"e, _ = compute_economics(f, ScenarioSpec(count={count}, seed=f.scenarios.seed), f.scenarios.batch_size); "
        "print(e.mine_value_usd.shape, e.n_coupled)"
    )
    wall_s, tree_gib, task_mib, procs, name = tree_peaks([PYTHON, "-c", code], env)
    task_ok = "OK" if task_mib < 512 else "ABOVE TARGET"
    line = (
        f"  {groups:5d} groups x {count:5d} scen, {step_minutes:2d} min: wall {wall_s:6.1f}s | peak Ray task "
        f"{task_mib:6.0f} MiB (target < 512: {task_ok}) | peak tree {tree_gib:5.2f} GiB"
    )
    if groups >= 1000 and count >= 1000:
        line += f" (target < 3 GiB: {'OK' if tree_gib < 3 else 'ABOVE TARGET'})"
    print(f"{line} | <= {procs} processes ({load()})")


def subhourly_value(count: int, days: int) -> None:
    """examples/fleet.yaml's own fleet over `days` from 2026-12-01 at 15 minutes, and its hourly twin on the
    same paths averaged to hours (what `hashpivot plan` reports as plan.json "subhourly")."""
    from solvers.planner import plan_fleet

    fleet = synthetic_fleet(0, count, 15, days=days, example=True)
    (result, _), wall_s = timed(lambda: plan_fleet(fleet, local=True))
    sub = result.subhourly
    print(
        f"  examples/fleet.yaml, {days} days, {count} scen, 15 min vs hourly means ({fleet.risk.objective.value}): "
        f"objective {sub.objective_usd / 1e6:.4f}M vs {sub.hourly_objective_usd / 1e6:.4f}M USD, value "
        f"{sub.value_usd:,.0f} USD ({sub.value_usd / abs(sub.hourly_objective_usd):.3%}); mean profit "
        f"+{sub.mean_profit_value_usd:,.0f} USD; same allocation {sub.same_allocation}; plan {wall_s:.1f}s, of "
        f"which hourly twin {result.timings_s['hourly_twin_s']:.1f}s ({load()})"
    )


def economics_section(quick: bool) -> None:
    print("\n[2] economics vs one numpy pass over the same scenario arrays (in-process, CPU time, best of runs;")
    print("    the chunks a Ray task streams: <= 250,000 scenario-steps each; examples/fleet.yaml's four markets and")
    print("    sites; with its winter events and calls (coupled steps: one item per profile and step), and without;")
    print("    kernel = optimizer/economics_kernel.py, numpy = the path of runs below KERNEL_MIN_SITE_CELLS)")
    cases = [(300, 50, 15), (1000, 100, 60)] if quick else [(1000, 1000, 60), (300, 200, 15)]
    for groups, count, minutes in cases:
        for events in (True, False):
            economics_vs_limit(groups, count, minutes, repeats=2 if quick else 3, events=events)
    kernel_fixed_cost()
    print("    peak memory: scenarios + economics on an embedded Ray (num_cpus = cores), gathered in the driver;")
    print("    tree = PSS summed over the driver and every descendant (shared pages once); task = the RSS of the")
    print("    largest Ray worker process while it runs the economics task")
    for groups, count, minutes in cases:
        economics_memory(groups, count, minutes)
    print("    value of 15-minute dispatch over hourly dispatch, same paths averaged to hours (in-process):")
    subhourly_value(20 if quick else 100, 91)


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


def peak_tree(cmd: list[str], env: dict, capture: bool = False):
    """Run `cmd`; sample the PSS summed over it and all its descendants every 50 ms (common.tree_memory);
    (wall s, peak GiB, max procs), and its standard output when `capture`."""
    peak, most = 0, 0

    def sample(pid: int) -> None:
        nonlocal peak, most
        rows = tree_memory(pid)
        peak, most = max(peak, sum(pss for _, pss, _ in rows)), max(most, len(rows))

    code, out, err, elapsed = run_sampled(cmd, sample, 0.05, cwd=ROOT, env=env)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return (elapsed, peak / 2**30, most, out) if capture else (elapsed, peak / 2**30, most)


def memory(count: int) -> None:
    print(f"\n[4] peak memory of the process tree: examples/fleet.yaml at {count:,} scenarios, plan only")
    print("    (PSS summed over the driver and every descendant: Ray's GCS, raylet, agents and workers;")
    print("     pages shared between processes, e.g. the object store, count once over the tree)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for label, local in (("in-process", True), ("embedded Ray", False)):
        code = (
            "from optimizer.fleet import load_fleet, with_overrides; from solvers.planner import plan_fleet; "
            f"f = with_overrides(load_fleet({EXAMPLE!r}), {{'scenarios': {{'count': {count}}}}}); "
            f"p, _ = plan_fleet(f, local={local}); print(p.solver.status, p.timings_s['total_s'])"
        )
        wall_s, peak_gib, procs = peak_tree([PYTHON, "-c", code], env)
        print(f"  {label:14s} wall {wall_s:6.1f}s  peak tree PSS {peak_gib:5.2f} GiB, <= {procs} processes ({load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 start-up runs, 200 scenarios only, no Ray references")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--memory-scenarios", type=int, default=1000)
    parser.add_argument(
        "--sections", type=int, nargs="+", choices=(1, 2, 3, 4), default=[1, 2, 3, 4], help="which sections to run"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.scenarios = 3, [200]
    print(f"hashpivot pipeline bench: {machine()}")
    out_dir = "/tmp/hashpivot-bench-pipeline"
    if 1 in args.sections:
        startup(args.repeats, out_dir, with_ray=not args.quick)
    if 2 in args.sections:
        economics_section(args.quick)
    if 3 in args.sections:
        handoff(args.scenarios, old_interface=True)
    if 4 in args.sections and not args.quick:
        memory(args.memory_scenarios)
    print(f"\ndone ({load()})")


if __name__ == "__main__":
    main()
