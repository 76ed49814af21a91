"""What one rack of each group is worth in each mode over the horizon: why the plan chose what it chose.

- mine: the plan's expected value of a mining rack (hash revenue minus power at the dispatch the plan
  runs, minus mining opex), `GroupAllocation.expected_mine_value_usd_per_rack`.
- ai: the present value of the IT capacity the rack's slot gives once converted (its machines' kW) at
  the best offer and start that may use the site: rent over the lease term (terminal value included)
  minus the per-MW capex the site funds, plus what the rack's machines are worth on their best
  conversion lifecycle (mining until construction starts, then sold, stored or moved). The site's
  fixed conversion capex is NOT spread over racks (it is paid once per site, whatever the count), nor
  is the take-or-pay net tenant power: both are in the per-site P&L. None when the group cannot
  convert (not convertible, or the site is not AI-ready, or no offer lists the site).
- idle: the value of the idle lifecycle (idle costs, and the machines' value at the horizon's end).
All present values, from the plan's own figures (GroupAllocation.option_values_usd_per_rack); no solve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from optimizer.allocation import lease_net_pv_usd_per_mw
from optimizer.constants import KW_PER_MW
from optimizer.fleet import Fleet
from optimizer.lifecycles import plan_grid
from optimizer.plan_result import GroupAllocation, PlanResult


@dataclass(frozen=True)
class RackValues:
    group: str
    site: str
    mine_usd: float
    ai_usd: float | None
    idle_usd: float
    best_offer: str | None  # the offer the AI value is priced at

    def as_dict(self) -> dict:
        return asdict(self)

    def best_mode(self) -> str:
        options = {"mine": self.mine_usd, "idle": self.idle_usd}
        if self.ai_usd is not None:
            options["ai"] = self.ai_usd
        return max(options, key=lambda m: (options[m], m == "mine"))


def ai_value_usd_per_rack(fleet: Fleet, allocation: GroupAllocation) -> tuple[float | None, str | None]:
    group = next(g for g in fleet.rack_groups if g.id == allocation.group)
    offers = [o for o in fleet.lease_offers if group.site in o.sites]
    if not fleet.can_convert(group) or not offers:
        return None, None
    grid = plan_grid(fleet)
    net = {o.id: lease_net_pv_usd_per_mw(fleet, grid, o.id, group.site) for o in offers}
    open_offers = [o for o in offers if net[o.id] is not None]
    if not open_offers:
        return None, None
    best = max(open_offers, key=lambda o: (net[o.id][0], o.id))
    start = net[best.id][1]
    machines = allocation.option_values_usd_per_rack
    fates = [v for key, v in machines.items() if key.startswith(f"ai@{start}:")]
    mw = fleet.rack_power_kw(group) / KW_PER_MW
    return mw * net[best.id][0] + (max(fates) if fates else 0.0), best.id


def rack_values(fleet: Fleet, plan: PlanResult) -> list[RackValues]:
    out = []
    for g in plan.allocation:
        group = next(x for x in fleet.rack_groups if x.id == g.group)
        ai, offer = ai_value_usd_per_rack(fleet, g)
        idle = g.option_values_usd_per_rack.get("idle", -group.idle_cost_usd_per_rack_day * fleet.horizon.days)
        out.append(
            RackValues(
                group=g.group,
                site=g.site,
                mine_usd=g.expected_mine_value_usd_per_rack,
                ai_usd=ai,
                idle_usd=idle,
                best_offer=offer,
            )
        )
    return out
