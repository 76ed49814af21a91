"""Human output of a plan: rich tables on the terminal, plan.json and CSVs a spreadsheet opens."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from optimizer.plan_result import PlanResult


def _usd(value: float) -> str:
    return f"${value:,.0f}"


def print_plan(plan: PlanResult, console: Console) -> None:
    unproven = " - UNPROVEN, see the solver line" if plan.solver.gap_exceeded else ""
    table = Table(title=f"Allocation: {plan.fleet} ({plan.horizon_days} days){unproven}")
    for column in ("group", "site", "machine", "mine", "AI", "idle", "run %", "breakeven $/MWh", "value $/rack"):
        table.add_column(column, justify="right" if column not in ("group", "site", "machine") else "left")
    for g in plan.allocation:
        table.add_row(
            g.group,
            g.site,
            g.machine,
            str(g.racks_mine),
            str(g.racks_ai),
            str(g.racks_idle),
            f"{100 * g.run_fraction:.0f}",
            f"{g.breakeven_power_price_usd_per_mwh:.1f}",
            f"{g.expected_mine_value_usd_per_rack:,.0f}",
        )
    console.print(table)

    sites = Table(title="Per site (expected over the horizon)")
    site_columns = ("site", "mining MW", "AI MW", "hash revenue", "power", "resale", "DR credit")
    site_columns += ("opex", "lease", "capex", "SLA", "profit")
    for column in site_columns:
        sites.add_column(column, justify="left" if column == "site" else "right")
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
            _usd(s.capex_usd),
            _usd(s.expected_sla_penalty_usd),
            _usd(s.expected_profit_usd),
        )
    console.print(sites)
    _print_power(plan, console)

    for offer in plan.offers:
        where = ", ".join(f"{site} {mw:.1f} MW" for site, mw in offer.mw_by_site.items()) or "declined"
        console.print(f"lease offer [bold]{offer.offer}[/bold]: {where}")
    p = plan.profit
    totals = plan.totals()
    console.print(
        f"racks: mine {totals['mine']}, AI {totals['ai']}, idle {totals['idle']} | "
        f"hashprice {plan.expected_hashprice_usd_per_ph_day:.2f} $/PH/day"
    )
    console.print(
        f"profit: mean {_usd(p['mean_usd'])}, std {_usd(p['std_usd'])}, P5 {_usd(p['p5_usd'])}, "
        f"P50 {_usd(p['p50_usd'])}, P95 {_usd(p['p95_usd'])}, VaR{p['alpha']:.0%} {_usd(p['var_usd'])}, "
        f"CVaR{p['alpha']:.0%} {_usd(p['cvar_usd'])}"
    )
    s = plan.solver
    console.print(
        f"solver: {s.status}, gap {s.mip_gap:.2e}, {s.variables} variables, {s.constraints} constraints, "
        f"solve {s.wall_s:.2f}s, total {plan.timings_s.get('total_s', 0):.1f}s"
    )
    if s.gap_exceeded:
        console.print(gap_warning(plan), style="bold red")


def gap_warning(plan: PlanResult) -> str:
    """One line saying the plan is unproven: the solve stopped at a limit with a gap above the accepted one."""
    s = plan.solver
    limit = f" of {s.time_limit_s:.0f} s" if s.status == "time_limit" and s.time_limit_s is not None else ""
    return (
        f"UNPROVEN PLAN: the solver stopped at its {s.status.replace('_', ' ')}{limit} with a gap of {s.mip_gap:.2%} "
        f"(accepted: {s.max_accepted_gap:.2%}); the allocation may be far from the best one"
    )


def _print_power(plan: PlanResult, console: Console) -> None:
    """Contracts, demand response, curtailment and lost AI uptime per site, when any site has them."""
    if not any(s.contract == "take_or_pay" or s.dr_commitment_mw or s.expected_event_curtailed_mwh for s in plan.sites):
        return
    power = Table(title="Power per site (expected over the horizon)")
    columns = ("site", "contract", "DR MW", "curtailed MWh", "by events/DR MWh", "lost AI MWh", "lost AI h")
    for column in columns:
        power.add_column(column, justify="left" if column in ("site", "contract") else "right")
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


def write_plan_outputs(plan: PlanResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = out_dir / "plan.json"
    plan_path.write_text(json.dumps(plan.model_dump(mode="json"), indent=2))
    allocation = [g.model_dump(exclude={"rack_ids_mine", "rack_ids_ai", "rack_ids_idle"}) for g in plan.allocation]
    offers = [
        {"offer": o.offer, "accepted": o.accepted, "site": site, "mw": mw}
        for o in plan.offers
        for site, mw in (o.mw_by_site or {"": 0.0}).items()
    ]
    return [
        plan_path,
        _write_csv(out_dir / "allocation.csv", allocation),
        _write_csv(out_dir / "sites.csv", [s.model_dump() for s in plan.sites]),
        _write_csv(out_dir / "offers.csv", offers),
        _write_csv(out_dir / "breakeven.csv", [b.model_dump() for b in plan.breakeven]),
    ]
