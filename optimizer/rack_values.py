"""What one rack of each group is worth in each mode over the horizon: why the plan chose what it chose.

- mine: the plan's expected value of a mining rack (hash revenue minus power at the dispatch the plan
  runs, minus mining opex), `GroupAllocation.expected_mine_value_usd_per_rack`.
- ai: the rent of the IT capacity the rack's slot gives once converted (its machines' kW), at the best
  offer that may use the site, for the part of the horizon after the conversion lead time, minus the
  horizon's share of the per-MW conversion capex. The site's fixed conversion capex is NOT spread over
  racks (it is paid once per site, whatever the count), nor is the take-or-pay net tenant power: both
  are in the per-site P&L. None when the group cannot convert (not convertible, or the site is not
  AI-ready, or no offer lists the site).
- idle: minus the idle cost of the horizon.
Pure arithmetic on the fleet and the plan; no solve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from optimizer.allocation import lease_revenue_usd_per_mw
from optimizer.constants import KW_PER_MW
from optimizer.fleet import Fleet
from optimizer.plan_result import PlanResult


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


def ai_value_usd_per_rack(fleet: Fleet, group_id: str) -> tuple[float | None, str | None]:
    group = next(g for g in fleet.rack_groups if g.id == group_id)
    site = fleet.site(group.site)
    offers = [o for o in fleet.lease_offers if group.site in o.sites]
    if not fleet.can_convert(group) or not offers:
        return None, None
    rent = {o.id: lease_revenue_usd_per_mw(fleet, o, site.id) for o in offers}
    best = max(offers, key=lambda o: (rent[o.id], o.id))
    mw = fleet.rack_power_kw(group) / KW_PER_MW
    capex_per_mw = site.ai.capex_usd_per_mw * site.ai.capex_share_of_horizon(fleet.horizon.days)
    return mw * (rent[best.id] - capex_per_mw), best.id


def rack_values(fleet: Fleet, plan: PlanResult) -> list[RackValues]:
    out = []
    for g in plan.allocation:
        group = next(x for x in fleet.rack_groups if x.id == g.group)
        ai, offer = ai_value_usd_per_rack(fleet, g.group)
        out.append(
            RackValues(
                group=g.group,
                site=g.site,
                mine_usd=g.expected_mine_value_usd_per_rack,
                ai_usd=ai,
                idle_usd=0.0 - group.idle_cost_usd_per_rack_day * fleet.horizon.days,
                best_offer=offer,
            )
        )
    return out
