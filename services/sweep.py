"""`hashpivot sweep`: re-plan a fleet over ranges of inputs, in parallel on Ray; sweep.csv, a tornado chart
and a decision map.

Every point is a whole plan (scenarios, per-rack economics, the MIP) in one Ray task with HiGHS on one
thread, on the SAME scenarios (the fleet's seed and stream): the differences between points come from
the inputs, not from sampling noise (common random numbers). The points of one sweep are independent,
so any number of workers gives the same sweep.csv.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from rich.console import Console

from optimizer.fleet import Fleet, FleetError, parse_fleet
from optimizer.plan_result import PlanResult
from optimizer.sweep import SweepInputError, TornadoBar, Vary, apply_inputs, base_value, sweep_points, tornado
from services.report import MODE_COLORS, _figure
from services.tables import new_table
from solvers.highs import InfeasiblePlanError, NoSolutionInTimeError
from solvers.planner import ScenarioSpec, assemble_plan, solve_allocation, streamed_economics
from solvers.ray_pool import ensure_ray, fan_out, in_process

METRICS = {
    "mean": "mean_usd",
    "objective": "objective_usd",
    "p5": "p5_usd",
    "cvar": "cvar_usd",
}
MODE_ORDER = ("mine", "ai", "idle")


def plan_point(fleet: Fleet) -> PlanResult:
    """One whole plan in this process: scenarios streamed chunk by chunk (as `hashpivot plan` does, so a
    five-year horizon never holds every scenario-step at once), the economics, the MIP on one thread."""
    spec = ScenarioSpec(count=fleet.scenarios.count, seed=fleet.scenarios.seed)
    with in_process():  # the point is the task: no nested tasks competing with the other points for CPUs
        economics, _ = streamed_economics(fleet, range(spec.count), spec.seed, spec.stream, None)
        solved = solve_allocation(fleet, economics, fleet.risk, fleet.solver.model_copy(update={"threads": 1}))
    return assemble_plan(fleet, economics, solved, spec, source="generated")


@ray.remote(num_cpus=1)
def _plan_point_remote(fleet: Fleet) -> tuple[str, PlanResult | None]:
    try:
        return "ok", plan_point(fleet)
    except InfeasiblePlanError as exc:
        return f"infeasible: {exc}", None
    except NoSolutionInTimeError as exc:
        return f"no solution in time: {exc}", None


def site_modes(plan: PlanResult) -> dict[str, str]:
    """The mode that holds most racks at each site ('mine', 'ai', 'idle'); ties in the order mine, AI, idle."""
    out = {}
    for s in plan.sites:
        counts = {"mine": s.racks_mine, "ai": s.racks_ai, "idle": s.racks_idle}
        out[s.site] = max(MODE_ORDER, key=lambda m: (counts[m], -MODE_ORDER.index(m)))
    return out


def summary_row(varied: str, inputs: dict[str, float], keys: list[str], base: dict, status: str, plan) -> dict:
    row: dict = {"varied": varied or "base"}
    for key in keys:
        row[key] = inputs.get(key, base.get(key))
    row["status"] = status
    if plan is None:
        return row
    totals = plan.totals()
    row.update(
        objective_usd=plan.solver.objective_usd,
        mean_usd=plan.profit["mean_usd"],
        std_usd=plan.profit["std_usd"],
        p5_usd=plan.profit["p5_usd"],
        cvar_usd=plan.profit["cvar_usd"],
        hashprice_usd_per_ph_day=plan.expected_hashprice_usd_per_ph_day,
        racks_mine=totals["mine"],
        racks_ai=totals["ai"],
        racks_idle=totals["idle"],
        ai_mw=sum(s.ai_mw for s in plan.sites),
    )
    modes = site_modes(plan)
    for s in plan.sites:
        row[f"{s.site}:mode"] = modes[s.site]
        row[f"{s.site}:mine/ai/idle"] = f"{s.racks_mine}/{s.racks_ai}/{s.racks_idle}"
    return row


def check_points(data: dict, varies: list[Vary], grid: bool) -> list[tuple[str, dict[str, float], Fleet]]:
    """Every point's fleet, validated before any work: a bad value names its --vary."""
    out = []
    for varied, inputs in sweep_points(varies, grid):
        try:
            fleet = parse_fleet(apply_inputs(data, inputs))
        except FleetError as exc:
            where = ", ".join(f"{k}={v:g}" for k, v in inputs.items())
            detail = "; ".join(f"{p}: {m}" for p, m in exc.violations)
            raise SweepInputError(f"--vary {where}", detail) from None
        out.append((varied, inputs, fleet))
    return out


def run_sweep(
    data: dict,
    varies: list[Vary],
    grid: bool,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Plan every point on Ray; one row per point, the base first."""
    points = check_points(data, varies, grid)
    ensure_ray()
    done = [0]

    def tick(_: int) -> None:
        done[0] += 1
        if progress:
            progress(done[0], len(points))

    results = fan_out(_plan_point_remote, [(fleet,) for _, _, fleet in points], workers, tick)
    keys = [v.key for v in varies]
    base = {k: base_value(data, k) for k in keys}
    return [
        summary_row(varied, inputs, keys, base, status, plan)
        for (varied, inputs, _), (status, plan) in zip(points, results, strict=True)
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _money(value: float) -> str:
    return f"${value / 1e6:,.2f}M" if abs(value) >= 1e6 else f"${value / 1e3:,.1f}k"


def tornado_chart(path: Path, bars: list[TornadoBar], base_metric: float | None, metric_label: str) -> None:
    fig = _figure((10, 1.0 + 0.6 * max(1, len(bars))))
    ax = fig.subplots()
    center = base_metric if base_metric is not None else 0.0
    for i, bar in enumerate(reversed(bars)):
        low, high = bar.metric_at_low / 1e6, bar.metric_at_high / 1e6
        ax.barh(i, low - center / 1e6, left=center / 1e6, color="#b03a48", height=0.6)
        ax.barh(i, high - center / 1e6, left=center / 1e6, color="#1b6ca8", height=0.6)
        ax.text(
            max(low, high, center / 1e6),
            i,
            f"  {bar.low_input:g} -> {bar.high_input:g}: swing {_money(bar.swing)}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(bars)), [b.key for b in reversed(bars)], fontsize=9)
    ax.axvline(center / 1e6, color="black", linewidth=1)
    ax.set_xlabel(f"{metric_label} over the horizon, $M (black line: the fleet file as is)")
    ax.set_title("Tornado: which input moves the plan's value most (each input alone, the plan re-optimised)")
    ax.legend(
        handles=[Patch(color="#b03a48", label="input at its low end"), Patch(color="#1b6ca8", label="at its high end")],
        fontsize=8,
        loc="best",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def decision_map_chart(path: Path, rows: list[dict], x: str, y: str, sites: list[str]) -> None:
    """Per site: the mode most racks take at each (x, y) of a two-input grid."""
    grid_rows = [r for r in rows if r["varied"] == "grid"]
    xs = sorted({r[x] for r in grid_rows})
    ys = sorted({r[y] for r in grid_rows})
    codes = {"mine": 0, "ai": 1, "idle": 2}
    cmap = ListedColormap([MODE_COLORS[m] for m in MODE_COLORS]).with_extremes(bad="#ffffff")
    fig = _figure((3.4 * len(sites) + 1, 3.6))
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, site in zip(axes, sites, strict=True):
        matrix = np.full((len(ys), len(xs)), np.nan)
        for r in grid_rows:
            mode = r.get(f"{site}:mode")
            if mode is not None:
                matrix[ys.index(r[y]), xs.index(r[x])] = codes[mode]
        ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=2, origin="lower", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs], fontsize=7, rotation=45)
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys], fontsize=7)
        ax.set_title(site, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
    axes[0].set_ylabel(y, fontsize=8)
    fig.legend(
        handles=[Patch(color=c, label=m.value) for m, c in MODE_COLORS.items()]
        + [Patch(color="#ffffff", label="no plan")],
        loc="upper right",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle("Decision map: the mode most racks of each site take", x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path)


def print_tornado(bars: list[TornadoBar], base_metric: float | None, metric_label: str, console: Console) -> None:
    base = "-" if base_metric is None else f"${base_metric:,.0f}"
    table = new_table(
        f"Tornado: {metric_label} swing per input (base {base})",
        ("input", "low", "high", f"{metric_label} at low", f"{metric_label} at high", "swing"),
        ("input",),
    )
    for b in bars:
        table.add_row(
            b.key,
            f"{b.low_input:g}",
            f"{b.high_input:g}",
            f"${b.metric_at_low:,.0f}",
            f"${b.metric_at_high:,.0f}",
            f"${b.swing:,.0f}",
        )
    console.print(table)


def print_grid(rows: list[dict], keys: list[str], sites: list[str], metric: str, console: Console) -> None:
    table = new_table(f"Grid: {metric} and the mode per site", (*keys, metric, *sites), (*sites,))
    for r in rows:
        if r["varied"] != "grid":
            continue
        value = r.get(metric)
        table.add_row(
            *(f"{r[k]:g}" for k in keys),
            "-" if value is None else f"${value:,.0f}",
            *(r.get(f"{s}:mode", r["status"][:20]) for s in sites),
        )
    console.print(table)


__all__ = ["METRICS", "SweepInputError", "run_sweep", "tornado", "tornado_chart", "decision_map_chart", "write_csv"]
