"""Human output of a plan: rich tables on the terminal, plan.json and CSVs a spreadsheet opens."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from optimizer.modes import MODES
from optimizer.plan_result import PlanResult
from optimizer.rack_ranges import label

FORMATS = ("table", "json", "csv")
PIPE_WIDTH = 400  # not a terminal: lines as wide as the content, never cut at 80 columns


def output_console(file=None) -> Console:
    """Console for results on stdout: the terminal's width on a TTY, else wide enough to never cut a cell."""
    out = file or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    return Console(file=out, width=None if tty else PIPE_WIDTH, soft_wrap=not tty)


class FoldTable(Table):
    """A rich Table whose number columns keep their full width; text columns (ids) fold, never '…'."""

    def __rich_console__(self, console, options):
        for column in self.columns:
            if column.no_wrap:
                cells = [str(column.header), *(c.plain if hasattr(c, "plain") else str(c) for c in column._cells)]
                column.min_width = max(len(c) for c in cells)
        yield from super().__rich_console__(console, options)


def new_table(title: str | None, columns: Sequence[str], left: Sequence[str] = ()) -> Table:
    """A table whose cells are never cut: on a narrow terminal they fold onto the next line, never '…'."""
    table = FoldTable(title=title)
    for column in columns:
        # numbers never wrap (their full width is the column's minimum); ids fold onto a next line, never '…'
        is_left = column in left
        table.add_column(column, justify="left" if is_left else "right", overflow="fold", no_wrap=not is_left)
    return table


def emit(rows: list[dict], fmt: str, title: str | None = None, console: Console | None = None) -> None:
    """Print rows as a table, JSON (a list of objects) or CSV (header then rows) on stdout."""
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
        return
    columns = list(rows[0]) if rows else []
    left = [c for c in columns if rows and isinstance(rows[0][c], str)]
    table = new_table(title, columns, left)
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    (console or output_console()).print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return "" if value is None else str(value)


def _usd(value: float) -> str:
    return f"-${-value:,.0f}" if round(value) < 0 else f"${value:,.0f}"


def print_plan(plan: PlanResult, console: Console, fleet=None) -> None:
    """The plan's tables; with the fleet, the value of one rack in each mode (mining, AI, idle) too."""
    values = {}
    if fleet is not None:
        from optimizer.rack_values import rack_values

        values = {v.group: v for v in rack_values(fleet, plan)}
    columns = ("group", "site", "machine", "mine", "AI", "idle", "sell", "move", "run %", "breakeven $/MWh")
    columns += ("mining $/rack", "AI $/rack", "idle $/rack") if values else ("value $/rack",)
    unproven = " - UNPROVEN, see the solver line" if plan.solver.gap_exceeded else ""
    title = f"Allocation: {plan.fleet} ({plan.horizon_days} days){unproven}"
    table = new_table(title, columns, ("group", "site", "machine"))
    for g in plan.allocation:
        cells = [
            g.group,
            g.site,
            g.machine,
            str(g.racks_mine),
            str(g.racks_ai),
            str(g.racks_idle),
            str(g.racks_sell),
            str(g.racks_move),
            f"{100 * g.run_fraction:.0f}",
            f"{g.breakeven_power_price_usd_per_mwh:.1f}",
            f"{g.expected_mine_value_usd_per_rack:,.0f}",
        ]
        if values:
            v = values[g.group]
            cells += ["n/a" if v.ai_usd is None else f"{v.ai_usd:,.0f}", f"{v.idle_usd:,.0f}"]
        table.add_row(*cells)
    console.print(table)
    if values:
        console.print(
            "present value of one rack in each mode; AI: rent over the lease at the best offer and start for the site "
            "minus the per-MW capex the site funds, plus the machines' best fate, before the site's fixed capex "
            "(docs/sweeps.md)",
            style="dim",
        )

    site_columns = ("site", "mining MW", "AI MW", "hash revenue", "power", "resale", "DR credit")
    site_columns += ("opex", "lease", "terminal", "capex", "machines", "SLA", "NPV")
    basis = plan.money_basis or "nominal"
    sites = new_table(f"Per site (expected; {basis})", site_columns, ("site",))
    for s in plan.sites:
        sites.add_row(
            s.site,
            f"{s.mining_mw:.1f}",
            f"{s.ai_mw:.1f}",
            _usd(s.expected_hash_revenue_usd),
            _usd(s.expected_power_cost_usd),
            _usd(s.expected_resale_revenue_usd),
            _usd(s.demand_response_credit_usd),
            _usd(s.mining_opex_usd + s.idle_cost_usd),
            _usd(s.lease_revenue_usd),
            _usd(s.terminal_value_usd),
            _usd(s.capex_usd),
            _usd(s.machine_sales_usd - s.move_cost_usd - s.machines_bought_usd),
            _usd(s.expected_sla_penalty_usd),
            _usd(s.expected_profit_usd),
        )
    console.print(sites)
    _print_power(plan, console)
    _print_deals(plan, console)

    for offer in plan.offers:
        where = ", ".join(f"{site} {mw:.1f} MW" for site, mw in offer.mw_by_site.items()) or "declined"
        console.print(f"lease offer [bold]{offer.offer}[/bold]: {where}")
    p = plan.profit
    totals = plan.totals()
    console.print(
        f"racks: mine {totals['mine']}, AI {totals['ai']}, idle {totals['idle']}, sell {totals['sell']}, "
        f"move {totals['move']} | "
        f"hashprice {plan.expected_hashprice_usd_per_ph_day:.2f} $/PH/day"
    )
    console.print(
        f"NPV: mean {_usd(p['mean_usd'])}, std {_usd(p['std_usd'])}, P5 {_usd(p['p5_usd'])}, "
        f"P50 {_usd(p['p50_usd'])}, P95 {_usd(p['p95_usd'])}, VaR{p['alpha']:.0%} {_usd(p['var_usd'])}, "
        f"CVaR{p['alpha']:.0%} {_usd(p['cvar_usd'])}"
    )
    if plan.subhourly is not None:
        console.print(subhourly_line(plan))
    s = plan.solver
    console.print(
        f"solver: {s.status}, gap {gap_text(s.mip_gap, '.2e')}, {s.variables} variables, {s.constraints} constraints, "
        f"solve {s.wall_s:.2f}s, total {plan.timings_s.get('total_s', 0):.1f}s"
    )
    if s.gap_exceeded:
        console.print(gap_warning(plan), style="bold red")


def _print_deals(plan: PlanResult, console: Console) -> None:
    """Conversions (NPV, IRR, payback) and the years (nominal cash, BTC, cost per BTC), when there are any."""
    if plan.conversions:
        columns = ("site", "start", "first rent", "IT MW", "leased MW", "capex", "rent PV", "terminal", "NPV")
        table = new_table("Conversions (present values)", (*columns, "IRR", "payback"), ("site", "start", "first rent"))
        for c in plan.conversions:
            table.add_row(
                c.site,
                c.start_date,
                c.ready_date,
                f"{c.it_mw:.1f}",
                f"{c.leased_mw:.1f}",
                _usd(c.capex_pv_usd),
                _usd(c.rent_pv_usd),
                _usd(c.terminal_value_usd),
                _usd(c.project_npv_usd),
                "-" if c.irr is None else f"{c.irr:.1%}",
                "never" if c.payback_months is None else f"{c.payback_months:.0f} mo",
            )
        console.print(table)
    if len(plan.years) > 1:
        columns = ("year", "from", "BTC mined", "hash revenue", "power", "opex", "rent", "capex", "EBITDA")
        table = new_table("Per year (expected, nominal)", (*columns, "cash $/BTC", "all-in $/BTC"), ("from",))
        for y in plan.years:
            table.add_row(
                str(y.year),
                y.start_date,
                f"{y.btc_mined:,.1f}",
                _usd(y.hash_revenue_usd),
                _usd(y.mining_power_cost_usd),
                _usd(y.mining_opex_usd),
                _usd(y.rent_usd),
                _usd(y.capex_usd),
                _usd(y.ebitda_usd),
                "-" if y.cash_cost_usd_per_btc is None else _usd(y.cash_cost_usd_per_btc),
                "-" if y.all_in_cost_usd_per_btc is None else _usd(y.all_in_cost_usd_per_btc),
            )
        console.print(table)
    for event in plan.timeline:
        console.print(f"{event.date}  {event.event.replace('_', ' ')}: {event.detail}", style="dim")


def subhourly_share(plan: PlanResult) -> float:
    """The value of sub-hourly dispatch as a share of the hourly plan's objective (nan when that is zero)."""
    sub = plan.subhourly
    return sub.value_usd / abs(sub.hourly_objective_usd) if sub.hourly_objective_usd else float("nan")


def subhourly_line(plan: PlanResult) -> str:
    """One line: what dispatching at the horizon's sub-hourly step is worth over hourly dispatch (plan.subhourly)."""
    sub = plan.subhourly
    allocation = "the same allocation" if sub.same_allocation else "a different allocation"
    return (
        f"{sub.step_minutes}-minute dispatch over hourly (the same paths averaged to hours): objective "
        f"{_usd(sub.objective_usd)} vs {_usd(sub.hourly_objective_usd)}, worth {_usd(sub.value_usd)} "
        f"({subhourly_share(plan):+.2%}); NPV mean {_usd(sub.mean_profit_usd)} vs {_usd(sub.hourly_mean_profit_usd)} "
        f"({_usd(sub.mean_profit_value_usd)}); {allocation}"
    )


def gap_text(mip_gap: float | None, spec: str) -> str:
    """The MIP gap formatted, or "unknown (no bound)" when the solve proved no bound."""
    return "unknown (no bound)" if mip_gap is None else format(mip_gap, spec)


def gap_warning(plan: PlanResult) -> str:
    """One line saying the plan is unproven: the solve stopped at a limit with a gap above the accepted one."""
    s = plan.solver
    limit = f" of {s.time_limit_s:.0f} s" if s.status == "time_limit" and s.time_limit_s is not None else ""
    return (
        f"UNPROVEN PLAN: the solver stopped at its {s.status.replace('_', ' ')}{limit} "
        f"with a gap of {gap_text(s.mip_gap, '.2%')} "
        f"(accepted: {s.max_accepted_gap:.2%}); the allocation may be far from the best one"
    )


def _print_power(plan: PlanResult, console: Console) -> None:
    """Contracts, demand response, curtailment and lost AI uptime per site, when any site has them."""
    if not any(s.contract == "take_or_pay" or s.dr_commitment_mw or s.expected_event_curtailed_mwh for s in plan.sites):
        return
    columns = ("site", "contract", "DR MW", "curtailed MWh", "by events/DR MWh", "lost AI MWh", "lost AI h")
    power = new_table("Power per site (expected over the horizon)", columns, ("site", "contract"))
    for s in plan.sites:
        power.add_row(
            s.site,
            s.contract,
            f"{s.dr_commitment_mw:.1f}",
            f"{s.expected_curtailed_mwh:,.0f}",
            f"{s.expected_event_curtailed_mwh:,.0f}",
            f"{s.expected_lost_ai_mwh:,.1f}",
            f"{s.expected_lost_ai_hours:,.1f}",
        )
    console.print(power)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plan_tables(plan: PlanResult, fleet=None) -> dict[str, list[dict]]:
    """Every table of a plan as rows, by CSV name (without .csv): the CSVs and plan.xlsx both come from here.

    With the fleet, allocation rows carry the value of one rack in each mode (optimizer/rack_values.py).
    """
    values = {}
    if fleet is not None:
        from optimizer.rack_values import rack_values

        values = {v.group: v for v in rack_values(fleet, plan)}
    allocation = []
    for g in plan.allocation:
        listed = {f"rack_ranges_{m.value}" for m in MODES} | {"lifecycles", "option_values_usd_per_rack"}
        row = g.model_dump(exclude=listed)
        row["rack_ids"] = rack_ids_text(g)
        row["lifecycles"] = "; ".join(f"{key}={n}" for key, n in g.lifecycles.items())
        row["option_values_usd_per_rack"] = "; ".join(
            f"{key}={value:.0f}" for key, value in g.option_values_usd_per_rack.items()
        )
        if g.group in values:
            v = values[g.group]
            row.update(
                value_ai_usd_per_rack=v.ai_usd, value_idle_usd_per_rack=v.idle_usd, ai_priced_at_offer=v.best_offer
            )
        allocation.append(row)
    offers = [
        {"offer": o.offer, "accepted": o.accepted, "site": site, "mw": mw}
        for o in plan.offers
        for site, mw in (o.mw_by_site or {"": 0.0}).items()
    ]
    tree = {}
    if plan.tree is not None:
        from optimizer.tree_report import tree_tables

        tree = tree_tables(plan.tree)
    return {
        "allocation": allocation,
        "sites": [s.model_dump() for s in plan.sites],
        "offers": offers,
        "breakeven": [b.model_dump() for b in plan.breakeven],
        "conversions": [c.model_dump() for c in plan.conversions],
        "years": [y.model_dump() for y in plan.years],
        "site_years": [y.model_dump() for y in plan.site_years],
        "timeline": [e.model_dump() for e in plan.timeline],
        **tree,
    }


def rack_ids_text(group) -> str:
    """Which racks take which mode, as ranges: "mine texas-00000..texas-00099; idle texas-00100..texas-00119"."""
    return "; ".join(f"{m.value} {label(group.rack_ranges(m))}" for m in MODES if group.rack_ranges(m))


def plan_json(plan: PlanResult, fleet=None) -> dict:
    """plan.json: the PlanResult, plus `rack_values` (value of a rack per mode) when the fleet is known."""
    data = plan.model_dump(mode="json")
    if fleet is not None:
        from optimizer.rack_values import rack_values

        data["rack_values"] = [v.as_dict() for v in rack_values(fleet, plan)]
    return finite_json(data)


def finite_json(value):
    """`value` with every non-finite float as None: json.dumps would write Infinity and NaN, which are not JSON."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_plan_outputs(plan: PlanResult, out_dir: Path, fleet=None) -> list[Path]:
    """plan.json, one CSV per table and plan.xlsx (one sheet per CSV, the same numbers)."""
    from services.workbook import write_workbook

    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / "plan.json"
    plan_path.write_text(json.dumps(plan_json(plan, fleet), indent=2, allow_nan=False))
    tables = plan_tables(plan, fleet)
    paths = [plan_path, *(_write_csv(out_dir / f"{name}.csv", rows) for name, rows in tables.items())]
    return [*paths, write_workbook(out_dir / "plan.xlsx", tables, plan)]


def _dollars(value: float) -> str:
    """Whole dollars; a difference of two equal optima (-1e-9) prints 0, not -0."""
    return f"{round(value):,}"


def _interval_text(value, what: str) -> str:
    """estimate [lower, upper] at 95% over N <what> (the estimate alone from fewer than two)."""
    n = len(value.replications_usd)
    if value.lower_usd is None:
        return f"{_dollars(value.estimate_usd)} (fewer than two {what}: no interval)"
    bounds = f"[{_dollars(value.lower_usd)}, {_dollars(value.upper_usd)}]"
    return f"{_dollars(value.estimate_usd)} {bounds} at {value.confidence_level:.0%} over {n} {what}"


def print_tree(report, console: Console) -> None:
    """The multi-stage plan: what to do now, the value of waiting, each node's decisions and the rule."""
    vw = report.value_of_waiting
    dates = ",".join(f"{m:g}" for m in report.decision_months)
    console.print(
        f"Scenario tree: decisions at months {dates}, branching {report.branching}: "
        f"{report.nodes} nodes, {report.scenarios} scenarios"
    )
    console.print(
        f"  multi-stage {report.multistage_usd:,.0f}  now-or-never {report.now_or_never_usd:,.0f}"
        + (f"  wait-and-see {report.wait_and_see_usd:,.0f}" if report.wait_and_see_usd is not None else "")
    )
    interval = _interval_text(vw, "independent trees")
    console.print(f"  value of waiting {_dollars(report.value_of_waiting_in_sample_usd)} in sample; {interval}")
    for score in report.out_of_sample:
        console.print(f"  out of sample: {score.policy} {_interval_text(score.objective, 'fresh trees')}")
    for difference, value in (
        ("rolling - now-or-never", report.out_of_sample_value_of_waiting),
        ("rolling - calculator", report.out_of_sample_gain_over_calculator),
    ):
        if value is not None:
            console.print(f"  out of sample: {difference} {_interval_text(value, 'fresh trees')}")
    table = Table(title="Decisions per node")
    columns = ("node", "parent", "month", "prob", "BTC $", "hashprice", "lifecycles", "conversions", "lease MW", "buy")
    for column in columns:
        table.add_column(column)
    for n in report.tree:
        if n.decision_month is None:
            continue
        table.add_row(
            str(n.node),
            str(n.parent),
            f"{n.decision_month:g}",
            f"{n.probability:.3f}",
            f"{n.btc_price_usd:,.0f}",
            f"{n.hashprice_usd_per_ph_day:.1f}",
            "; ".join(f"{c.group}: {c.lifecycle}={c.racks}" for c in n.lifecycles),
            ", ".join(f"{s}@{k}" for s, k in n.conversions.items()),
            ", ".join(f"{k}={v:.3f}" for k, v in n.lease_mw.items()),
            ", ".join(f"{k}={v}" for k, v in n.purchases.items()),
        )
    console.print(table)
    for rule in report.decision_rules:
        console.print(f"  rule: {rule.rule}")
