"""Quarterly re-planning: carry what a plan committed into the next run.

A plan's *state* lists its dated decisions: racks sold, racks moved, machines bought (today, or at a
recourse date: `fleet.recourse_months`, dated accordingly), conversions
(start of construction, first rent, capex and its schedule, what became of the racks' machines) and
the leases signed with them. `hashpivot plan FLEET --as-of DATE --state STATE.json` treats every
decision dated on or before DATE as done and plans the rest of the horizon from DATE:

- sold racks leave their group; moved racks join a group `<group>_at_<site>` at their new site;
  stored racks a non-convertible group `<group>-stored`; delivered machines a group named after
  their purchase option, undelivered ones a purchase the plan must take (`min_racks`) at no
  further cost (it is paid);
- a started conversion becomes a committed hall: its slots form `<group>-hall` groups of
  `committed_ai` racks (no machines), the site converts now with only the capex still to pay
  (the schedule's months after DATE) and cannot grow; each lease signed with it becomes an offer
  `<offer>-signed` of exactly its MW for its remaining months that the plan must accept, at the
  rate of the lease year running at DATE (escalations then come on DATE's anniversaries, a shift of
  less than a year documented in docs/fleet.md), marked `committed` so every solve takes it;
- decisions dated after DATE (a construction start still to come) are not carried: the new plan
  decides them afresh.

The state a plan writes holds the decisions carried in plus its own, all against the original
fleet file, so each quarter runs the same fleet file with the latest state.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from optimizer.constants import DAYS_PER_MONTH
from optimizer.fleet import Fleet, FleetError, parse_fleet
from optimizer.lifecycles import plan_grid
from optimizer.plan_result import PlanResult

STATE_FORMAT = "hashpivot-state/1"


class Sale(BaseModel):
    group: str
    racks: int
    date: dt.date


class Move(BaseModel):
    group: str
    to_site: str
    racks: int
    date: dt.date


class Purchase(BaseModel):
    option: str
    racks: int
    date: dt.date  # ordered
    delivery_date: dt.date


class Conversion(BaseModel):
    site: str
    date: dt.date  # construction starts
    ready_date: dt.date
    it_mw: float
    capex_usd: float  # nominal, net of tenant funding
    capex_schedule: list[float]  # share paid in each month from `date`
    racks: dict[str, dict[str, int]]  # group -> machines' fate (sell, store, move:SITE) -> racks


class Lease(BaseModel):
    offer: str
    site: str
    mw: float
    date: dt.date  # signed: the conversion's start
    rent_start: dt.date
    term_months: int
    rate_usd_per_kw_month: float
    escalator_per_year: float
    sla_penalty_usd_per_mwh: float


class PlanState(BaseModel):
    format: str = STATE_FORMAT
    fleet: str
    sales: list[Sale] = []
    moves: list[Move] = []
    purchases: list[Purchase] = []
    conversions: list[Conversion] = []
    leases: list[Lease] = []

    def committed(self, as_of: dt.date) -> PlanState:
        """The decisions done by `as_of`."""
        return PlanState(
            fleet=self.fleet,
            **{name: [d for d in getattr(self, name) if d.date <= as_of] for name in _KINDS},
        )

    def merged(self, other: PlanState) -> PlanState:
        return PlanState(fleet=self.fleet, **{name: getattr(self, name) + getattr(other, name) for name in _KINDS})


_KINDS = ("sales", "moves", "purchases", "conversions", "leases")


def load_state(path: Path) -> PlanState:
    try:
        state = PlanState.model_validate(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise FleetError([("--state", f"{path}: cannot read a state file ({exc})")]) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FleetError([(f"--state {where}", first["msg"])]) from None
    if state.format != STATE_FORMAT:
        raise FleetError([("--state format", f"{path} is {state.format!r}, this version reads {STATE_FORMAT!r}")])
    return state


def state_from_plan(fleet: Fleet, plan: PlanResult) -> PlanState:
    """The plan's own dated decisions (committed halls and signed leases carried in are not repeated)."""
    start = fleet.horizon.start
    grid = plan_grid(fleet)
    groups = {g.id: g for g in fleet.rack_groups}
    position = {g.id: n for n, g in enumerate(fleet.rack_groups)}
    sales, moves, fates = [], [], {}
    for g in plan.allocation:
        if groups[g.group].committed_ai:
            continue
        options = {life.key: life for life in grid.lifecycles[position[g.group]]}
        for key, n in g.lifecycles.items():
            life = options[key]
            if life.conversion is not None:
                fates.setdefault(g.site, {}).setdefault(g.group, {})[key.split(":", 1)[1]] = n
            elif life.sold_at is not None:  # today, or at a recourse date (sell@mM)
                sales.append(Sale(group=g.group, racks=n, date=_boundary_date(grid, start, life.sold_at)))
            elif life.moved_at is not None:  # move:SITE or move@mM:SITE
                date = _boundary_date(grid, start, life.moved_at)
                moves.append(Move(group=g.group, to_site=key.rsplit(":", 1)[1], racks=n, date=date))
    lots = {lot.key: lot for lot in grid.purchase_lots}
    purchases = []
    for key, n in plan.purchases.items():
        lot = lots[key]
        option = fleet.purchases[lot.option]
        if n and (lot.ordered_at > 0 or option.min_racks == 0):  # racks ordered before the plan are carried in
            date = _boundary_date(grid, start, lot.ordered_at)
            delivery = date + dt.timedelta(days=option.delivery_days)
            purchases.append(Purchase(option=option.id, racks=n, date=date, delivery_date=delivery))
    conversions, leases = [], []
    for c in plan.conversions:
        site = fleet.site(c.site)
        if any(groups[g].committed_ai for g in fates.get(c.site, {})) or c.site not in fates:
            continue  # a committed hall carried in
        conversions.append(
            Conversion(
                site=c.site,
                date=dt.date.fromisoformat(c.start_date),
                ready_date=dt.date.fromisoformat(c.ready_date),
                it_mw=c.it_mw,
                capex_usd=c.capex_usd,
                capex_schedule=site.ai.capex_shares(),
                racks=fates[c.site],
            )
        )
        for offer in plan.offers:
            mw = offer.mw_by_site.get(c.site, 0.0)
            if mw <= 0 or offer.offer.endswith("-signed"):
                continue
            terms = fleet.lease_offer(offer.offer)
            leases.append(
                Lease(
                    offer=offer.offer,
                    site=c.site,
                    mw=mw,
                    date=dt.date.fromisoformat(c.start_date),
                    rent_start=dt.date.fromisoformat(c.ready_date),
                    term_months=terms.term_months,
                    rate_usd_per_kw_month=terms.rate_usd_per_kw_month,
                    escalator_per_year=terms.escalator_per_year,
                    sla_penalty_usd_per_mwh=terms.sla_penalty_usd_per_mwh,
                )
            )
    return PlanState(
        fleet=fleet.name, sales=sales, moves=moves, purchases=purchases, conversions=conversions, leases=leases
    )


def _boundary_date(grid, start: dt.date, boundary: int) -> dt.date:
    return start + dt.timedelta(days=round(grid.boundary_days(boundary)))


def apply_state(fleet: Fleet, state: PlanState, as_of: dt.date) -> Fleet:
    """The fleet as it stands at `as_of` after the state's decisions done by then."""
    if as_of < fleet.horizon.start:
        raise FleetError([("--as-of", f"{as_of} is before the fleet's horizon start {fleet.horizon.start}")])
    done = state.committed(as_of)
    data = fleet.model_dump(mode="json", exclude_none=True)
    data["horizon"]["start"] = as_of.isoformat()
    elapsed_months = (as_of - fleet.horizon.start).days / DAYS_PER_MONTH  # recourse dates stay on the calendar
    data["recourse_months"] = [m - elapsed_months for m in fleet.recourse_months if m - elapsed_months > 0]
    groups = {g["id"]: g for g in data["rack_groups"]}
    for sale in sorted(done.sales, key=lambda d: d.date):
        _take(groups, sale.group, sale.racks, "sales")
    for move in sorted(done.moves, key=lambda d: d.date):
        _add(
            groups,
            moved_group_id(move.group, move.to_site),
            _take(groups, move.group, move.racks, "moves"),
            move.racks,
            site=move.to_site,
        )
    for conversion in done.conversions:
        _commit_hall(data, groups, conversion, as_of)
    for lease in done.leases:
        _sign(data, lease, as_of)
    for purchase in done.purchases:
        _commit_purchase(data, groups, purchase, as_of)
    data["rack_groups"] = list(groups.values())
    return parse_fleet(data)


def _take(groups: dict[str, dict], group_id: str, racks: int, kind: str) -> dict:
    group = groups.get(group_id)
    if group is None or group["racks"] < racks:
        have = 0 if group is None else group["racks"]
        raise FleetError([(f"--state {kind}", f"{racks} racks of {group_id!r} committed, the fleet has {have}")])
    group["racks"] -= racks
    return group


def _add(groups: dict[str, dict], group_id: str, like: dict, racks: int, **changes: Any) -> None:
    if group_id in groups:
        groups[group_id]["racks"] += racks
    else:
        groups[group_id] = {**like, "id": group_id, "racks": racks, **changes}


def moved_group_id(group_id: str, site_id: str) -> str:
    """The id of the racks of `group_id` that now stand at `site_id` (within the fleet's id characters)."""
    return f"{group_id}_at_{site_id}"


def _commit_hall(data: dict, groups: dict[str, dict], conversion: Conversion, as_of: dt.date) -> None:
    machines = {m["id"]: m for m in data["machines"]}
    for group_id, fates in conversion.racks.items():
        total = sum(fates.values())
        group = _take(groups, group_id, total, "conversions")
        for fate, n in fates.items():
            if fate.startswith("move:"):
                _add(groups, moved_group_id(group_id, fate[5:]), group, n, site=fate[5:])
            elif fate == "store":
                _add(groups, f"{group_id}-stored", group, n, convertible=False)
        slot_machine = f"{group['machine']}-slot"
        if slot_machine not in machines:
            machines[slot_machine] = {**machines[group["machine"]], "id": slot_machine}
            machines[slot_machine].pop("resale_usd_per_th", None)
        _add(
            groups,
            f"{group_id}-hall",
            group,
            total,
            machine=slot_machine,
            committed_ai=True,
            opex_usd_per_rack_day=0.0,
            idle_cost_usd_per_rack_day=0.0,
        )
    data["machines"] = list(machines.values())
    elapsed_months = (as_of - conversion.date).days / DAYS_PER_MONTH
    remaining = [share for j, share in enumerate(conversion.capex_schedule) if j > elapsed_months - 1e-9]
    site = next(s for s in data["sites"] if s["id"] == conversion.site)
    site["ai"] = {
        "fixed_capex_usd": conversion.capex_usd * sum(remaining),
        "capex_usd_per_mw": 0.0,
        "lead_time_days": max(0, (conversion.ready_date - as_of).days),
        "start_months": [0.0],
        "capex_schedule": [share / sum(remaining) for share in remaining] if sum(remaining) > 0 else None,
        "min_mw": conversion.it_mw * (1 - 1e-9),
        "max_mw": conversion.it_mw,
    }
    site["ai"] = {k: v for k, v in site["ai"].items() if v is not None}


def _sign(data: dict, lease: Lease, as_of: dt.date) -> None:
    """The signed lease as an offer of exactly its MW for its remaining months; the open offer loses those MW."""
    running_months = max(0.0, (as_of - lease.rent_start).days / DAYS_PER_MONTH)
    years = math.floor(running_months / 12)
    offer_id = f"{lease.offer}-signed"
    data["lease_offers"] = [o for o in data["lease_offers"] if o["id"] != lease.offer or _shrink(o, lease.mw)]
    data["lease_offers"].append(
        {
            "id": offer_id,
            "rate_usd_per_kw_month": lease.rate_usd_per_kw_month * (1 + lease.escalator_per_year) ** years,
            "term_months": max(1, lease.term_months - math.floor(running_months)),
            "escalator_per_year": lease.escalator_per_year,
            "min_mw": lease.mw * (1 - 1e-9),
            "max_mw": lease.mw,
            "sites": [lease.site],
            "sla_penalty_usd_per_mwh": lease.sla_penalty_usd_per_mwh,
            "committed": True,
        }
    )


def _shrink(offer: dict, mw: float) -> bool:
    """Take the signed MW off the open offer; False (drop it) when nothing is left."""
    offer["max_mw"] -= mw
    offer["min_mw"] = 0.0
    return offer["max_mw"] > 1e-9


def _commit_purchase(data: dict, groups: dict[str, dict], purchase: Purchase, as_of: dt.date) -> None:
    options = {o["id"]: o for o in data.get("purchases", [])}
    option = options.get(purchase.option)
    if option is None:
        raise FleetError([("--state purchases", f"unknown purchase option {purchase.option!r}")])
    if purchase.delivery_date <= as_of:
        like = {"site": option["site"], "machine": option["machine"], "machines_per_rack": option["machines_per_rack"]}
        like["opex_usd_per_rack_day"] = option.get("opex_usd_per_rack_day", 0.0)
        _add(groups, purchase.option, like, purchase.racks)
        option["max_racks"] = max(0, option["max_racks"] - purchase.racks)
        return
    options[f"{purchase.option}-ordered"] = {
        **option,
        "id": f"{purchase.option}-ordered",
        "price_usd_per_th": 0.0,  # paid when ordered
        "delivery_days": (purchase.delivery_date - as_of).days,
        "min_racks": purchase.racks,
        "max_racks": purchase.racks,
    }
    option["max_racks"] = max(0, option["max_racks"] - purchase.racks)
    data["purchases"] = list(options.values())
