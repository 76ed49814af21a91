"""The robustness report: a comparison table on the terminal, and DIR/report.html with its PNG charts.

Charts are drawn on matplotlib Figures with the Agg canvas: no pyplot global state and no display,
so the report can be written from a server thread. The HTML comes from a jinja2 template under
services/templates; every chart is embedded as a base64 PNG data URI, so report.html alone is the
plan a board reads (mail it as is). The PNGs are also written beside it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rich.console import Console
from rich.table import Table

from optimizer.allocation import Allocation, Mode
from optimizer.economics import rack_margin_usd
from optimizer.fleet import Fleet
from optimizer.plan_result import PlanResult
from optimizer.risk import cvar
from optimizer.robustness import ConfidenceInterval, RobustnessReport
from optimizer.scenarios import generate_scenarios

TEMPLATES = Path(__file__).parent / "templates"
PLAN_LABELS = {
    "stochastic": "stochastic (this plan)",
    "mean_value": "mean-value plan",
    "calculator": "calculator rule",
    "all_mining": "all mining",
    "wait_and_see": "wait-and-see (perfect information)",
}
PLAN_COLORS = {
    "stochastic": "#1b6ca8",
    "mean_value": "#e08a1e",
    "calculator": "#7a9a3a",
    "all_mining": "#b03a48",
    "wait_and_see": "#777777",
}
MODE_COLORS = {Mode.MINE: "#f2a900", Mode.AI: "#3b7dd8", Mode.IDLE: "#bbbbbb"}  # bitcoin orange, AI blue, idle grey
DPI = 110


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    rounded = round(value)
    return f"-${-rounded:,.0f}" if rounded < 0 else f"${rounded:,.0f}"


def _half_width(ci: ConfidenceInterval) -> float | None:
    return None if ci.lower_usd is None or ci.upper_usd is None else (ci.upper_usd - ci.lower_usd) / 2


def _ci(ci: ConfidenceInterval | None) -> str:
    if ci is None:
        return "-"
    return f"{_usd(ci.estimate_usd)} [{_usd(ci.lower_usd)}, {_usd(ci.upper_usd)}]"


# ---------------------------------------------------------------------------------------------
# Terminal


def print_robustness(report: RobustnessReport, console: Console) -> None:
    level = f"{report.confidence_level:.0%}"
    alpha = f"{report.alpha:.0%}"
    table = Table(
        title=f"Out of sample: {report.out_of_sample_scenarios} fresh scenarios (seed {report.out_of_sample_seed}, "
        f"stream {report.out_of_sample_stream}); objective {report.objective}"
    )
    for column in (
        "plan",
        "racks mine/AI/idle",
        "mean profit",
        f"{level} CI ±",
        "P5",
        f"CVaR{alpha}",
        "objective",
        "vs plan",
        "feasible",
    ):
        table.add_column(column, justify="left" if column == "plan" else "right")
    stochastic = report.plan("stochastic").objective_usd
    for p in report.plans:
        table.add_row(
            PLAN_LABELS.get(p.plan, p.plan),
            f"{p.racks_mine}/{p.racks_ai}/{p.racks_idle}",
            _usd(p.mean_profit_usd.estimate_usd),
            _usd(_half_width(p.mean_profit_usd)),
            _usd(p.p5_profit_usd),
            _usd(p.cvar_usd),
            _usd(p.objective_usd),
            "" if p.plan == "stochastic" else _usd(p.objective_usd - stochastic),
            "yes" if p.feasible else "[red]NO[/red]",
        )
    ws = report.wait_and_see
    if ws is not None:
        table.add_row(
            PLAN_LABELS["wait_and_see"],
            "per scenario",
            _usd(ws.mean_profit_usd),
            "",
            "",
            "",
            _usd(ws.objective_usd),
            _usd(ws.objective_usd - ws.stochastic_objective_usd),
            f"{ws.scenarios} sc.",
        )
    console.print(table)
    console.print(
        f"VSS   (plan - mean-value plan): objective {_ci(report.value_of_stochastic_solution_usd)}, "
        f"mean profit {_ci(report.value_of_stochastic_solution_mean_profit_usd)}"
    )
    console.print(
        f"EVPI  (wait-and-see - plan):    objective {_ci(report.expected_value_of_perfect_information_usd)}, "
        f"mean profit {_ci(report.expected_value_of_perfect_information_mean_profit_usd)}"
    )
    gap = report.optimality_gap
    if gap is not None:
        console.print(
            f"optimality gap (MMW, {gap.replications} replications x {gap.scenarios_per_replication} scenarios): "
            f"[0, {_usd(gap.upper_bound_usd)}] at {gap.confidence_level:.0%} "
            f"({gap.relative_upper_bound:.3%} of the objective); mean {_usd(gap.mean_gap_usd)}, "
            f"std {_usd(gap.std_gap_usd)}; {gap.note}"
        )
    sens = report.sensitivity
    if sens is not None:
        capacity = ", ".join(f"{c.site} {_usd(c.objective_gain_usd)}" for c in sens.capacity)
        console.print(f"value of +1 MW over the horizon: {capacity}")
        today = f"today {sens.expected_hashprice_usd_per_ph_day:.2f} $/PH/day"
        flips = Table(title=f"Hashprice at which each group's mining rack count changes ({today})")
        for column in ("group", "mining racks", "below $/PH/day", "racks then", "above $/PH/day", "racks then"):
            flips.add_column(column, justify="left" if column == "group" else "right")
        for f in sens.hashprice_flips:
            flips.add_row(
                f.group,
                str(f.racks_mine),
                "-" if f.lower_hashprice_usd_per_ph_day is None else f"{f.lower_hashprice_usd_per_ph_day:.2f}",
                "-" if f.racks_mine_below is None else str(f.racks_mine_below),
                "-" if f.upper_hashprice_usd_per_ph_day is None else f"{f.upper_hashprice_usd_per_ph_day:.2f}",
                "-" if f.racks_mine_above is None else str(f.racks_mine_above),
            )
        console.print(flips)
    for note in report.notes:
        console.print(f"note: {note}")


# ---------------------------------------------------------------------------------------------
# Charts


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def profit_distribution_chart(path: Path, profits: dict[str, np.ndarray], wait_and_see: np.ndarray, alpha: float):
    fig = _figure((12, 4.6))
    hist, ecdf = fig.subplots(1, 2)
    series = {name: values for name, values in profits.items() if name != "stochastic"}
    if len(wait_and_see):
        series["wait_and_see"] = wait_and_see
    series["stochastic"] = profits["stochastic"]  # drawn last, on top
    everything = np.concatenate(list(series.values())) / 1e6
    bins = np.linspace(everything.min(), everything.max(), 50)
    for name, values in series.items():
        millions = np.asarray(values) / 1e6
        color, width = PLAN_COLORS.get(name), 2.6 if name == "stochastic" else 1.4
        label = PLAN_LABELS.get(name, name)
        if name != "stochastic" and len(values) == len(profits["stochastic"]):
            if np.allclose(values, profits["stochastic"], rtol=0, atol=0.5):
                label += " = the plan"  # identical plans would otherwise hide each other
        share = np.full(len(millions), 1.0 / len(millions))  # wait-and-see has fewer scenarios: compare shares
        hist.hist(millions, bins=bins, weights=share, histtype="step", linewidth=width, color=color, label=label)
        hist.axvline(cvar(millions, alpha), color=color, linestyle="--", linewidth=1)
        ordered = np.sort(millions)
        ecdf.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", color=color, linewidth=width)
    hist.set_title(f"Out-of-sample profit (dashed: CVaR{alpha:.0%})")
    hist.set_xlabel("profit over the horizon, $M")
    hist.set_ylabel("share of scenarios")
    hist.legend(fontsize=8, loc="upper left")
    ecdf.axhline(1 - alpha, color="black", linewidth=0.8, linestyle=":")
    ecdf.set_title(f"Cumulative distribution (dotted: the worst {1 - alpha:.0%})")
    ecdf.set_xlabel("profit over the horizon, $M")
    ecdf.set_ylabel("share of scenarios at or below")
    for ax in (hist, ecdf):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def allocation_chart(path: Path, fleet: Fleet, allocations: dict[str, Allocation]):
    sites = [s.id for s in fleet.sites]
    fig = _figure((3.2 * len(sites) + 1, 4.2))
    axes = fig.subplots(1, len(sites), squeeze=False)
    names = list(allocations)
    for ax, site in zip(axes[0], sites, strict=True):
        bottom = np.zeros(len(names))
        for mode in (Mode.MINE, Mode.AI, Mode.IDLE):
            heights = np.array(
                [sum(allocations[n].count(g.id, mode) for g in fleet.rack_groups if g.site == site) for n in names]
            )
            ax.bar(range(len(names)), heights, bottom=bottom, color=MODE_COLORS[mode], label=mode.value)
            bottom += heights
        ax.set_xticks(
            range(len(names)),
            [PLAN_LABELS.get(n, n).split(" (")[0] for n in names],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_title(f"{site}\n{fleet.site(site).capacity_mw:g} MW", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("racks")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Racks per site and mode: the plan against the baselines", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path)


def run_matrix(fleet: Fleet, allocation: Allocation, scenario_index: int, seed: int, stream: int) -> np.ndarray:
    """[groups, steps]: 1 when a mining rack of the group runs (margin > 0), 0 curtailed, NaN no racks mining."""
    scenarios = generate_scenarios(
        fleet.bitcoin, fleet.markets, fleet.horizon, indices=[scenario_index], seed=seed, stream=stream
    )
    rows = []
    for g, group in enumerate(fleet.rack_groups):
        revenue, cost = rack_margin_usd(fleet, g, scenarios)
        running = (revenue[0] > cost[0]).astype(float)
        rows.append(running if allocation.count(group.id, Mode.MINE) else np.full_like(running, np.nan))
    return np.array(rows)


def heat_map_chart(path: Path, fleet: Fleet, matrix: np.ndarray, title: str):
    fig = _figure((12, 0.45 * len(fleet.rack_groups) + 1.6))
    ax = fig.subplots()
    # curtailed, running; "bad" (NaN) = no mining racks in the group
    cmap = ListedColormap(["#2b3a55", "#f2a900"]).with_extremes(bad="#e6e6e6")
    days = matrix.shape[1] * fleet.horizon.step_hours / 24
    ax.imshow(
        np.ma.masked_invalid(matrix),
        aspect="auto",
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(0, days, len(fleet.rack_groups) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(fleet.rack_groups)), [g.id for g in fleet.rack_groups], fontsize=8)
    ax.set_xlabel(f"day of the horizon from {fleet.horizon.start} (one column per {fleet.horizon.step_hours} h step)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(
        handles=[
            Patch(color="#f2a900", label="run (1)"),
            Patch(color="#2b3a55", label="curtail (0)"),
            Patch(color="#e6e6e6", label="no racks mining"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path)


def fan_chart(path: Path, fleet: Fleet, scenarios, title: str = "") -> None:
    """Percentile bands (5-95, 25-75, median) of the hashprice, BTC and each market's power price paths, by day."""
    panels = [
        ("hashprice, $/PH/day", scenarios.hashprice_usd_per_ph_day),
        ("BTC price, $k", scenarios.btc_price_usd / 1e3),
        *((f"power {m}, $/MWh (daily mean)", scenarios.power_price(m)) for m in scenarios.markets),
    ]
    fig = _figure((12, 2.6 * ((len(panels) + 1) // 2) + 0.6))
    axes = fig.subplots((len(panels) + 1) // 2, 2, squeeze=False).ravel()
    steps_per_day = max(1, int(24 // scenarios.step_hours))
    for ax, (title, values) in zip(axes, panels, strict=False):
        n_days = values.shape[1] // steps_per_day
        daily = values[:, : n_days * steps_per_day].reshape(values.shape[0], n_days, steps_per_day).mean(axis=2)
        days = np.arange(n_days)
        p5, p25, p50, p75, p95 = np.percentile(daily, [5, 25, 50, 75, 95], axis=0)
        ax.fill_between(days, p5, p95, color="#1b6ca8", alpha=0.18, label="5-95%")
        ax.fill_between(days, p25, p75, color="#1b6ca8", alpha=0.35, label="25-75%")
        ax.plot(days, p50, color="#1b6ca8", linewidth=1.6, label="median")
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.set_xlabel(f"day from {fleet.horizon.start}", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# The report

FAN_SCENARIOS = 100  # paths drawn again for the fan chart: enough for its percentiles, cheap on the driver


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fan_scenarios(fleet: Fleet, plan: PlanResult, scenarios):
    """The plan's own scenarios when given, else the first FAN_SCENARIOS drawn again (same seed and stream)."""
    if scenarios is not None:
        return scenarios
    if plan.scenarios.get("source") != "generated":
        return None
    count = min(int(plan.scenarios.get("count", FAN_SCENARIOS)), FAN_SCENARIOS)
    seed, stream = int(plan.scenarios.get("seed", 0)), int(plan.scenarios.get("stream", 0))
    return generate_scenarios(fleet.bitcoin, fleet.markets, fleet.horizon, range(count), seed, stream)


def write_report(
    fleet: Fleet, plan: PlanResult, run, out_dir: Path, previous: dict | None = None, scenarios=None
) -> list[Path]:
    """DIR/report.html for a plan with its RobustnessRun (solvers.robustness.assess_plan): one self-contained
    file for a board (charts embedded as data URIs; the PNGs are also written beside it for slides).

    `previous`: an earlier plan.json (as a dict) to compare with; `scenarios`: the plan's ScenarioSet for
    the fan chart (drawn again from the fleet's seed when not given)."""
    from services.board import board_context
    from services.tables import subhourly_share

    report: RobustnessReport = run.report
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "profit_distribution": out_dir / "profit_distribution.png",
        "allocation": out_dir / "allocation_by_site.png",
        "heat_map_typical": out_dir / "heat_map_typical.png",
        "heat_map_stress": out_dir / "heat_map_stress.png",
    }
    profit_distribution_chart(
        charts["profit_distribution"], run.oos_profits_usd, run.wait_and_see_profits_usd, report.alpha
    )
    allocation_chart(charts["allocation"], fleet, run.allocations)
    stochastic = run.allocations["stochastic"]
    by_index = dict(zip(run.oos_indices.tolist(), run.oos_profits_usd["stochastic"].tolist(), strict=True))
    for key, index, label in (
        ("heat_map_typical", report.typical_scenario_index, "typical (median profit)"),
        ("heat_map_stress", report.stress_scenario_index, "stress (worst profit)"),
    ):
        matrix = run_matrix(fleet, stochastic, index, run.seed, report.out_of_sample_stream)
        mining = matrix[~np.isnan(matrix[:, 0])] if matrix.size else matrix
        share = float(np.nanmean(mining)) if mining.size else 0.0
        heat_map_chart(
            charts[key],
            fleet,
            matrix,
            f"Hourly run/curtail of the plan's mining racks: {label} out-of-sample scenario #{index}\n"
            f"plan profit {_usd(by_index[index])}; mining racks run {share:.0%} of the hours",
        )
    fan = _fan_scenarios(fleet, plan, scenarios)
    if fan is not None:
        charts["fan"] = out_dir / "scenario_fan.png"
        total = int(plan.scenarios.get("count", fan.n_scenarios))
        which = f"The {total}" if fan.n_scenarios >= total else f"The first {fan.n_scenarios} of the {total}"
        fan_chart(charts["fan"], fleet, fan, f"{which} scenarios the plan was made on (daily means)")
    if plan.tree is not None:
        from services.tree_charts import tree_charts

        charts.update(tree_charts(out_dir, plan.tree))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["usd"] = _usd
    env.filters["ci"] = _ci
    html = env.get_template("report.html.j2").render(
        plan=plan,
        report=report,
        labels=PLAN_LABELS,
        charts={k: _data_uri(p) for k, p in charts.items()},
        chart_files={k: p.name for k, p in charts.items()},
        board=board_context(fleet, plan, previous),
        subhourly_share=subhourly_share(plan) if plan.subhourly is not None else None,
    )
    path = out_dir / "report.html"
    path.write_text(html)
    return [path, *charts.values()]
