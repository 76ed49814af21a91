"""`hashpivot diff PLAN_A.json PLAN_B.json`: what changed between two plans, and why in economics.

Racks moved between modes per rack group (mine -> AI 120 ...), MW per site and per offer, profit and
risk figures side by side, and for each moved group the value of one rack in each mode in both plans
(`rack_values` of plan.json, optimizer/rack_values.py), so the reason reads as money: "AI $41,000 vs
mining $12,500 per rack". Works on plan.json files alone; a plan.json written without the fleet (by
`client optimize --out`) has only the mining value per rack, and the reason says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from services.messages import CliInputError
from services.tables import new_table

MODES = ("mine", "ai", "idle", "sell", "move")
MODE_LABEL = {"mine": "mining", "ai": "AI", "idle": "idle", "sell": "sold", "move": "moved"}
PROFIT_FIGURES = (
    ("mean_usd", "mean profit"),
    ("std_usd", "std"),
    ("p5_usd", "P5"),
    ("p50_usd", "P50"),
    ("p95_usd", "P95"),
    ("var_usd", "VaR"),
    ("cvar_usd", "CVaR"),
)
MW_TOL = 1e-6


def load_plan_data(path: Path) -> dict:
    """A plan.json as a dict; one clear error when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CliInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or "allocation" not in data or "profit" not in data:
        raise CliInputError(f"{path}: not a plan.json (no `allocation` and `profit`)")
    return data


@dataclass
class GroupChange:
    group: str
    site: str
    racks_a: dict[str, int]
    racks_b: dict[str, int]
    moves: list[tuple[str, str, int]]  # (from mode, to mode, racks)
    values_a: dict[str, float | None]  # value of one rack per mode over the horizon, USD
    values_b: dict[str, float | None]
    reason: str


@dataclass
class PlanDiff:
    label_a: str
    label_b: str
    groups: list[GroupChange]
    sites: list[dict]
    offers: list[dict]
    figures: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def moved(self) -> list[GroupChange]:
        return [g for g in self.groups if g.moves]

    def as_dict(self) -> dict:
        return asdict(self)


def rack_moves(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, str, int]]:
    """Racks from the modes that lost them to the modes that gained them, in mode order (mine, AI, idle)."""
    losses = {m: before.get(m, 0) - after.get(m, 0) for m in MODES if before.get(m, 0) > after.get(m, 0)}
    gains = {m: after.get(m, 0) - before.get(m, 0) for m in MODES if after.get(m, 0) > before.get(m, 0)}
    moves = []
    for source in MODES:
        for target in MODES:
            n = min(losses.get(source, 0), gains.get(target, 0))
            if n > 0:
                moves.append((source, target, n))
                losses[source] -= n
                gains[target] -= n
    return moves


def _values(plan: dict) -> dict[str, dict[str, float | None]]:
    """Per group: value of one rack per mode; mining only when plan.json has no rack_values. Selling and moving
    are valued from the plan's option values (the best move target)."""
    out = {}
    for g in plan["allocation"]:
        options = g.get("option_values_usd_per_rack") or {}
        moves = [v for key, v in options.items() if key.startswith("move:")]
        out[g["group"]] = {
            "mine": g["expected_mine_value_usd_per_rack"],
            "ai": None,
            "idle": None,
            "sell": options.get("sell"),
            "move": max(moves) if moves else None,
        }
    for v in plan.get("rack_values") or []:
        out[v["group"]].update(mine=v["mine_usd"], ai=v["ai_usd"], idle=v["idle_usd"])
    return out


def _usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    rounded = round(value)
    return f"-${-rounded:,}" if rounded < 0 else f"${rounded:,}"


def _reason(moves, values_a, values_b, label_a: str, label_b: str) -> str:
    parts = []
    for source, target, _ in moves:
        va, vb = values_b.get(source), values_b.get(target)
        if va is None or vb is None:
            known = ", ".join(f"{MODE_LABEL[m]} {_usd(v)}" for m, v in values_b.items() if v is not None)
            parts.append(
                f"{MODE_LABEL[source]} -> {MODE_LABEL[target]}: per rack in {label_b}: {known} "
                f"(the other modes' values need a plan.json written with its fleet)"
            )
            continue
        text = f"{MODE_LABEL[target]} {_usd(vb)} vs {MODE_LABEL[source]} {_usd(va)} per rack in {label_b}"
        before_s, before_t = values_a.get(source), values_a.get(target)
        changed = []
        for mode, before, after in ((source, before_s, va), (target, before_t, vb)):
            if before is not None and abs(after - before) > max(1.0, 0.005 * abs(before)):
                changed.append(f"{MODE_LABEL[mode]} {_usd(before)} -> {_usd(after)}")
        if changed:
            text += f" ({label_a} to {label_b}: {', '.join(changed)})"
        if vb <= va:
            text += (
                f"; {MODE_LABEL[target]} is worth less per rack alone, so a limit moved it "
                "(offer MW, site capacity, AI block or capital budget: see the offers and sites)"
            )
        parts.append(text)
    return "; ".join(parts)


def diff_plans(a: dict, b: dict, label_a: str = "A", label_b: str = "B") -> PlanDiff:
    notes = []
    if a.get("horizon_days") != b.get("horizon_days"):
        notes.append(
            f"horizons differ: {a.get('horizon_days')} vs {b.get('horizon_days')} days; totals are not comparable"
        )
    groups_a = {g["group"]: g for g in a["allocation"]}
    groups_b = {g["group"]: g for g in b["allocation"]}
    only = sorted(set(groups_a) ^ set(groups_b))
    if only:
        notes.append(f"rack groups in one plan only: {', '.join(only)}")
    values_a, values_b = _values(a), _values(b)
    empty = {m: 0 for m in MODES}
    groups = []
    for gid in [*groups_a, *(g for g in groups_b if g not in groups_a)]:
        ga, gb = groups_a.get(gid), groups_b.get(gid)
        ra = {m: ga.get(f"racks_{m}", 0) for m in MODES} if ga else dict(empty)  # older plans had 3 modes
        rb = {m: gb.get(f"racks_{m}", 0) for m in MODES} if gb else dict(empty)
        moves = rack_moves(ra, rb) if ga and gb else []
        va = values_a.get(gid, dict.fromkeys(MODES))
        vb = values_b.get(gid, dict.fromkeys(MODES))
        groups.append(
            GroupChange(
                group=gid,
                site=(gb or ga)["site"],
                racks_a=ra,
                racks_b=rb,
                moves=moves,
                values_a=va,
                values_b=vb,
                reason=_reason(moves, va, vb, label_a, label_b) if moves else "",
            )
        )
    sites_a = {s["site"]: s for s in a.get("sites", [])}
    sites_b = {s["site"]: s for s in b.get("sites", [])}
    sites = []
    for sid in [*sites_a, *(s for s in sites_b if s not in sites_a)]:
        sa, sb = sites_a.get(sid, {}), sites_b.get(sid, {})
        row = {"site": sid}
        for key, name in (("mining_mw", "mining_mw"), ("ai_mw", "ai_mw"), ("expected_profit_usd", "profit_usd")):
            row[f"{name}_a"] = sa.get(key, 0.0)
            row[f"{name}_b"] = sb.get(key, 0.0)
        sites.append(row)
    mw_a = {(o["offer"], s): mw for o in a.get("offers", []) for s, mw in o["mw_by_site"].items()}
    mw_b = {(o["offer"], s): mw for o in b.get("offers", []) for s, mw in o["mw_by_site"].items()}
    accepted_a = {o["offer"]: o["accepted"] for o in a.get("offers", [])}
    accepted_b = {o["offer"]: o["accepted"] for o in b.get("offers", [])}
    offers = []
    for oid in [*accepted_a, *(o for o in accepted_b if o not in accepted_a)]:
        pairs = sorted({s for (o, s) in [*mw_a, *mw_b] if o == oid}) or [""]
        for sid in pairs:
            offers.append(
                {
                    "offer": oid,
                    "site": sid,
                    "mw_a": mw_a.get((oid, sid), 0.0),
                    "mw_b": mw_b.get((oid, sid), 0.0),
                    "accepted_a": accepted_a.get(oid, False),
                    "accepted_b": accepted_b.get(oid, False),
                }
            )
    figures = []
    for key, name in PROFIT_FIGURES:
        if key in a["profit"] or key in b["profit"]:
            va, vb = a["profit"].get(key), b["profit"].get(key)
            figures.append({"figure": name, "a": va, "b": vb, "change": None if va is None or vb is None else vb - va})
    oa, ob = a.get("solver", {}).get("objective_usd"), b.get("solver", {}).get("objective_usd")
    if oa is not None and ob is not None:
        figures.append({"figure": f"objective ({b.get('objective', '')})", "a": oa, "b": ob, "change": ob - oa})
    return PlanDiff(label_a, label_b, groups, sites, offers, figures, notes)


def move_text(moves: list[tuple[str, str, int]]) -> str:
    return ", ".join(f"{MODE_LABEL[s]} -> {MODE_LABEL[t]} {n:,}" for s, t, n in moves)


def diff_rows(diff: PlanDiff) -> dict[str, list[dict]]:
    """Flat rows per table, for --format json|csv."""
    groups = []
    for g in diff.groups:
        row = {"group": g.group, "site": g.site}
        for m in MODES:
            row[f"{m}_a"], row[f"{m}_b"] = g.racks_a[m], g.racks_b[m]
        for m in MODES:
            row[f"value_{m}_usd_per_rack_a"], row[f"value_{m}_usd_per_rack_b"] = g.values_a.get(m), g.values_b.get(m)
        row["moves"] = move_text(g.moves)
        row["reason"] = g.reason
        groups.append(row)
    return {"groups": groups, "sites": diff.sites, "offers": diff.offers, "figures": diff.figures}


def print_diff(diff: PlanDiff, console: Console) -> None:
    a, b = diff.label_a, diff.label_b
    table = new_table(
        f"Racks per group: {a} -> {b} (mine/AI/idle/sold/moved)",
        ("group", "site", a, b, "moved", "why"),
        ("group", "site", "moved", "why"),
    )
    for g in diff.groups:
        table.add_row(
            g.group,
            g.site,
            "/".join(str(g.racks_a[m]) for m in MODES),
            "/".join(str(g.racks_b[m]) for m in MODES),
            move_text(g.moves) or "-",
            g.reason,
        )
    console.print(table)
    sites = new_table(
        "MW and profit per site",
        (
            "site",
            f"mining MW {a}",
            f"mining MW {b}",
            f"AI MW {a}",
            f"AI MW {b}",
            f"profit {a}",
            f"profit {b}",
            "change",
        ),
        ("site",),
    )
    for s in diff.sites:
        sites.add_row(
            s["site"],
            f"{s['mining_mw_a']:.1f}",
            f"{s['mining_mw_b']:.1f}",
            f"{s['ai_mw_a']:.1f}",
            f"{s['ai_mw_b']:.1f}",
            _usd(s["profit_usd_a"]),
            _usd(s["profit_usd_b"]),
            _usd(s["profit_usd_b"] - s["profit_usd_a"]),
        )
    console.print(sites)
    if diff.offers:
        offers = new_table("Lease offers (MW)", ("offer", "site", a, b, "change"), ("offer", "site"))
        for o in diff.offers:
            offers.add_row(
                o["offer"],
                o["site"] or "-",
                f"{o['mw_a']:.2f}" if o["accepted_a"] else "declined",
                f"{o['mw_b']:.2f}" if o["accepted_b"] else "declined",
                f"{o['mw_b'] - o['mw_a']:+.2f}",
            )
        console.print(offers)
    figures = new_table("Profit and risk over the horizon", ("figure", a, b, "change"), ("figure",))
    for f in diff.figures:
        figures.add_row(f["figure"], _usd(f["a"]), _usd(f["b"]), _usd(f["change"]))
    console.print(figures)
    moved = sum(n for g in diff.groups for _, _, n in g.moves)
    groups = len(diff.moved)
    console.print(f"{moved:,} racks change mode across {groups} group{'' if groups == 1 else 's'}")
    for note in diff.notes:
        console.print(f"note: {note}")
