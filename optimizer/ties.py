"""Deterministic tie-breaking between interchangeable rack groups.

Two rack groups are interchangeable when they sit at the same site with the same machine, racks
per machine count, opex, idle cost and convertibility: every constraint and every scenario's profit
sees only their combined counts per mode, so the MIP may split those counts between them any way
it likes (HiGHS picks one by its own search order, which can change with the solver version or the
thread count). `break_ties` makes the split canonical without changing the objective: the pooled
counts are dealt out in fleet-file order, mining first, then AI, then idle, so the group listed
first mines first. Groups that differ in anything priced are never touched: their values differ,
and the solver's choice between them is the economics, not a tie. docs/fleet.md states the rule.
"""

from __future__ import annotations

from collections import defaultdict

from optimizer.allocation import Allocation
from optimizer.fleet import Fleet, RackGroup
from optimizer.lifecycles import plan_grid


def tie_key(group: RackGroup) -> tuple:
    """Everything about a group that any constraint or price sees; equal keys are interchangeable."""
    return (
        group.site,
        group.machine,
        group.machines_per_rack,
        group.opex_usd_per_rack_day,
        group.idle_cost_usd_per_rack_day,
        group.convertible,
    )


def break_ties(fleet: Fleet, allocation: Allocation) -> Allocation:
    """The same plan with the counts of interchangeable groups dealt out in fleet order, lifecycle by lifecycle
    in the order of the options (mining first)."""
    grid = plan_grid(fleet)
    classes: dict[tuple, list[int]] = defaultdict(list)
    for g, group in enumerate(fleet.rack_groups):
        classes[tie_key(group)].append(g)
    counts = {gid: dict(c) for gid, c in allocation.lifecycle_counts(fleet).items()}
    for members in classes.values():
        if len(members) < 2:
            continue
        keys = [life.key for life in grid.lifecycles[members[0]]]
        ids = [fleet.rack_groups[g].id for g in members]
        pooled = {key: sum(counts.get(gid, {}).get(key, 0) for gid in ids) for key in keys}
        for g, gid in zip(members, ids, strict=True):
            room, dealt = fleet.rack_groups[g].racks, {}
            for key in keys:
                take = min(room, pooled[key])
                if take:
                    dealt[key], pooled[key], room = take, pooled[key] - take, room - take
            counts[gid] = dealt
    return Allocation.from_lifecycles(
        fleet,
        grid,
        counts,
        conversion_start=allocation.conversion_start,
        lease_mw=allocation.lease_mw,
        dr_mw=allocation.dr_mw,
        purchases=allocation.purchases,
    )
