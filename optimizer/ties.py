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

from optimizer.allocation import MODES, Allocation
from optimizer.fleet import Fleet, RackGroup


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
    """The same plan with the counts of interchangeable groups dealt out in fleet order, mining first."""
    classes: dict[tuple, list[RackGroup]] = defaultdict(list)
    for group in fleet.rack_groups:
        classes[tie_key(group)].append(group)
    racks = {gid: dict(counts) for gid, counts in allocation.racks.items()}
    for members in classes.values():
        if len(members) < 2:
            continue
        pooled = {mode: sum(allocation.count(g.id, mode) for g in members) for mode in MODES}
        for group in members:
            room = group.racks
            counts = {}
            for mode in MODES:
                take = min(room, pooled[mode])
                counts[mode], pooled[mode], room = take, pooled[mode] - take, room - take
            racks[group.id] = counts
    return Allocation(
        racks=racks, converted_sites=allocation.converted_sites, lease_mw=allocation.lease_mw, dr_mw=allocation.dr_mw
    )
