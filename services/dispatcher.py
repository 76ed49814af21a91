"""The Dispatch handler and its per-plan dispatch tables, shared by the main server and its Dispatch fronts.

A plan's dispatch table (optimizer/dispatch.py: run thresholds, racks and ids per group) is laid out
once, when the plan is made or first dispatched, and kept for the next DISPATCH_CACHE_PLANS plans, so a
Dispatch call is a lookup and a few comparisons. The tables come from `load_plan` (the job store in the
main server, a read-only view of the same database in a front, services/front.py); plans never change
once stored, so a table only ever has to go when its plan is deleted (`forget`, `keep_only`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from optimizer.allocation import Mode
from optimizer.dispatch import (
    DispatchTable,
    build_dispatch_table,
    decide,
    network_hashprice_usd_per_ph_day,
    site_conditions,
    site_prices_usd_per_mwh,
)
from optimizer.fleet import Fleet
from optimizer.plan_result import PlanResult
from services import convert
from services.auth import Caller, current_caller
from services.errors import invalid_argument, not_found
from services.handlers import handle_errors
from services.store import PlanRecord

SERVER_TIME_METADATA = "hashpivot-server-time-us"  # Dispatch trailing metadata: handler time, microseconds
DISPATCH_CACHE_PLANS = 1024


@dataclass(frozen=True)
class _DispatchEntry:
    plan_id: str
    owner: str
    table: DispatchTable


class PlanDispatcher:
    """Dispatch over the plans `load_plan(plan_id, owner)` finds (owner None: any)."""

    def __init__(self, load_plan: Callable[[str, str | None], PlanRecord | None]):
        self._load_plan = load_plan
        self._entries: collections.OrderedDict[str, _DispatchEntry] = collections.OrderedDict()

    @handle_errors
    async def Dispatch(self, request, context):
        started = time.perf_counter()
        entry = self._entry(request.plan_id, current_caller())
        table = entry.table
        prices = site_prices_usd_per_mwh(
            table, request.power_price_usd_per_mwh_by_site, request.spot_price_usd_per_mwh_by_market
        )
        conditions = site_conditions(table, request.available_mw_by_site, request.dr_call_sites)
        decision = decide(table, prices, _hashprice(table, request), conditions)
        response = convert.dispatch_response(entry.plan_id, table, decision, request.include_rack_ids)
        context.set_trailing_metadata(((SERVER_TIME_METADATA, str(round((time.perf_counter() - started) * 1e6))),))
        return response

    def remember(self, plan_id: str, fleet: Fleet, plan: PlanResult, owner: str = "") -> None:
        """Lay out a plan's dispatch table once, when the plan is made or first dispatched."""
        self._entries[plan_id] = _DispatchEntry(plan_id, owner, plan_dispatch_table(fleet, plan))
        self._entries.move_to_end(plan_id)
        while len(self._entries) > DISPATCH_CACHE_PLANS:
            self._entries.popitem(last=False)

    def forget(self, plan_id: str) -> None:
        self._entries.pop(plan_id, None)

    def cached_ids(self) -> list[str]:
        return list(self._entries)

    def keep_only(self, plan_ids: Iterable[str]) -> None:
        """Drop the tables of plans not in `plan_ids` (deleted elsewhere)."""
        keep = set(plan_ids)
        for plan_id in [p for p in self._entries if p not in keep]:
            del self._entries[plan_id]

    def _entry(self, plan_id: str, caller: Caller) -> _DispatchEntry:
        entry = self._entries.get(plan_id)
        if entry is None:
            record = self._load_plan(plan_id, caller.sees)
            if record is None:
                raise not_found("plan", plan_id)
            self.remember(plan_id, record.fleet(), record.plan, record.owner)
            entry = self._entries[plan_id]
        if caller.sees is not None and entry.owner != caller.sees:
            raise not_found("plan", plan_id)
        return entry


def plan_dispatch_table(fleet: Fleet, plan: PlanResult) -> DispatchTable:
    """The dispatch table of a stored plan: its mining racks and their ids (as ranges), its first stage."""
    racks = {g.group: g.racks_mine for g in plan.allocation}
    ranges = {g.group: g.rack_ranges(Mode.MINE) for g in plan.allocation}
    return build_dispatch_table(fleet, racks, ranges, allocation=convert.plan_allocation(plan))


def _hashprice(table: DispatchTable, request) -> float:
    source = request.WhichOneof("hashprice_source")
    if source == "hashprice_usd_per_ph_day":
        return request.hashprice_usd_per_ph_day
    if source == "network":
        network = request.network
        return network_hashprice_usd_per_ph_day(
            table,
            network.btc_price_usd,
            network.network_hashrate_ehs,
            network.fees_btc_per_block if network.HasField("fees_btc_per_block") else None,
            network.block_height if network.HasField("block_height") else None,
        )
    raise invalid_argument([("hashprice_source", "give hashprice_usd_per_ph_day or network")])
