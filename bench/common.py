"""What the benchmark scripts share: the repo on sys.path, a timer, one compact plan measured end to end, a
server started in a child process, a command run while its process tree's memory (PSS) is sampled."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.allocation import scenario_profits_usd  # noqa: E402
from optimizer.economics import group_economics  # noqa: E402
from optimizer.fleet import Fleet  # noqa: E402
from optimizer.formulation import build_compact_model, extract_allocation  # noqa: E402
from optimizer.scenarios import generate_scenarios  # noqa: E402
from solvers.highs import solve  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def start_server(args: list[str], **popen) -> tuple[subprocess.Popen, str]:
    """`hashpivot serve --port 0 ARGS` in a child process, and its loopback address once it serves."""
    hashpivot = str(Path(sys.executable).parent / "hashpivot")
    process = subprocess.Popen([hashpivot, "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True, **popen)
    for line in process.stderr:
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, f"127.0.0.1:{found.group(1)}"
    raise RuntimeError("the server did not start")


def run_sampled(cmd: list[str], sample, interval_s: float, **popen) -> tuple[int, str, str, float]:
    """Run `cmd` to its end while a thread calls `sample(pid)` every `interval_s` (e.g. to read the memory of
    its process tree); (return code, stdout, stderr, wall s)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sample(proc.pid)
            stop.wait(interval_s)

    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    return proc.returncode, out, err, time.perf_counter() - start


def pss_bytes(process) -> int:
    """Proportional set size of a psutil.Process: pages shared between processes (the Ray object store, mapped
    by every worker that reads a batch without copying it; shared libraries) count once over a tree, split
    between the processes mapping them, not once per process as summed RSS would (which reported 25 GiB on
    this 24 GiB machine for 10,000 scenarios). RSS where PSS cannot be read; 0 once the process is gone."""
    import psutil

    try:
        return process.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return process.memory_info().rss
    except psutil.Error:
        return 0


def tree_memory(pid: int) -> list[tuple[str, int, int]]:
    """(command line's first word, PSS bytes, RSS bytes) of process `pid` and each of its live descendants:
    a tree's memory is the sum of the PSS column (pss_bytes); RSS is one process's own resident figure."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    rows = []
    for proc in procs:
        try:
            name, rss = " ".join(proc.cmdline()[:1]), proc.memory_info().rss
        except psutil.Error:
            continue
        rows.append((name, pss_bytes(proc), rss))
    return rows


def solve_compact(fleet: Fleet, n_scenarios: int) -> dict:
    """Draw, price, build and solve in one process (no Ray), timing each stage."""
    scenarios, gen_s = timed(
        lambda: generate_scenarios(
            fleet.bitcoin, fleet.markets, fleet.horizon, range(n_scenarios), fleet.scenarios.seed
        )
    )
    economics, econ_s = timed(lambda: group_economics(fleet, scenarios))
    model, build_s = timed(lambda: build_compact_model(fleet, economics, fleet.risk))
    outcome = solve(model, 600, fleet.solver.mip_rel_gap)
    allocation = extract_allocation(model, fleet)
    profits = scenario_profits_usd(fleet, economics, allocation)
    return {
        "economics": economics,
        "allocation": allocation,
        "gen_s": gen_s,
        "econ_s": econ_s,
        "build_s": build_s,
        "solve_s": outcome.wall_s,
        "vars": model.nvariables(),
        "cons": model.nconstraints(),
        "binaries": len(getattr(model, "ai_over_cap", ())),
        "coupled": economics.n_coupled,
        "objective": outcome.objective_usd,
        "mean": float(profits.mean()),
        "status": outcome.status,
        "gap": outcome.mip_gap,
    }
