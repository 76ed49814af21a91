"""A real PlannerServer on a loopback port, run on its own event loop in a background thread.

Tests talk to it through the generated stubs over a real channel, exactly as a remote client would;
stopping and starting a server on the same database file is a restart.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.hashpivot.v1 import fleet_pb2, planner_service_pb2_grpc
from services import convert
from services.server import PlannerServer, ServerConfig


class ServerThread:
    """`insecure=True` (no tokens) keeps the tests of the planning RPCs about planning; the tests of
    identity (test_security.py) pass `config` with tokens and TLS."""

    def __init__(
        self,
        db_path: Path,
        max_concurrent_jobs: int = 1,
        grace_s: float = 5.0,
        config: ServerConfig | None = None,
    ):
        self.config = config or ServerConfig(insecure=True)
        self.config.host, self.config.port, self.config.db_path = "127.0.0.1", 0, db_path
        self.config.max_concurrent_jobs, self.config.grace_s = max_concurrent_jobs, grace_s
        self.config.exit_on_ray_loss = False  # the test process must never exit under a slow Ray
        self.server = PlannerServer(self.config)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._started.set()
            raise
        self._started.set()
        await self._stop.wait()
        await self.server.stop(self._grace_s)

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.wait(120)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stub(self, channel: grpc.Channel) -> planner_service_pb2_grpc.PlannerServiceStub:
        return planner_service_pb2_grpc.PlannerServiceStub(channel)

    def call(self, coroutine_fn, timeout_s: float = 30.0):
        """Run a coroutine on the server's loop (to inspect or poke the server from a test)."""
        return asyncio.run_coroutine_threadsafe(coroutine_fn(), self.loop).result(timeout_s)

    def stop(self, grace_s: float | None = None, timeout_s: float = 60.0) -> None:
        self._grace_s = self.config.grace_s if grace_s is None else grace_s
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "server did not stop"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def rich_details(error: grpc.RpcError) -> dict[str, list[tuple[str, str]]]:
    """The google.rpc details of a failed call: {"fields": [(field, description)], "constraints": [(subject, ...)]}."""
    out: dict[str, list[tuple[str, str]]] = {"fields": [], "constraints": []}
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out["fields"] += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            out["constraints"] += [(v.subject, v.description) for v in failure.violations]
            assert all(v.type == "CONSTRAINT" for v in failure.violations)
    return out


def fleet_message(data: dict) -> fleet_pb2.Fleet:
    return convert.fleet_to_message(data)


def hard_fleet_data(time_limit_s: float = 60.0, groups_per_site: int = 16, sites: int = 3) -> dict:
    """A fleet whose MIP HiGHS cannot close quickly: many rack groups of odd sizes packed into tight
    site capacities, AI blocks, an offer with a minimum, mean-CVaR. HiGHS finds a plan within
    ~0.05 s but does not prove optimality (gap 0 asked) within 20 s on one thread, so a short
    time limit or deadline stops it with a plan and a gap, and a cancel catches it mid-solve.
    Economics are tiny (3 days, 40 scenarios)."""
    rng = np.random.default_rng(5)
    machines = [
        {"id": f"m{k}", "hashrate_ths": float(100 + 13 * k), "efficiency_j_per_th": float(15 + 1.7 * k)}
        for k in range(8)
    ]
    site_list, groups = [], []
    for s in range(sites):
        site_list.append(
            {
                "id": f"s{s}",
                "market": "ercot",
                "capacity_mw": 1.0 + 0.37 * s,
                "contract": {"type": "index", "adder_usd_per_mwh": 2 + s},
                "ai": {
                    "capex_usd_per_mw": 1_500_000,
                    "fixed_capex_usd": 30_000,
                    "lead_time_days": 0,
                    "min_mw": 0.2,
                    "max_mw": 0.9,
                },
            }
        )
        for g in range(groups_per_site):
            groups.append(
                {
                    "id": f"g{s}-{g}",
                    "site": f"s{s}",
                    "machine": f"m{(g + s) % 8}",
                    "racks": int(rng.integers(5, 15)),
                    "machines_per_rack": int(rng.integers(7, 23)),
                    "opex_usd_per_rack_day": float(rng.uniform(1, 4)),
                }
            )
    return {
        "name": "hard",
        "horizon": {"start": "2026-12-01", "days": 3},
        "markets": [
            {"id": "ercot", "mean_price_usd_per_mwh": 42, "vol_per_sqrt_day": 0.5, "spike_prob_per_hour": 0.01}
        ],
        "machines": machines,
        "sites": site_list,
        "rack_groups": groups,
        "lease_offers": [
            {
                "id": "o1",
                "rate_usd_per_kw_month": 60,
                "term_months": 36,
                "min_mw": 0.3,
                "max_mw": 1.5,
                "sites": [s["id"] for s in site_list],
            }
        ],
        "capital_budget_usd": 2_000_000,
        "risk": {"objective": "cvar", "alpha": 0.9, "weight": 0.5},
        "scenarios": {"count": 40, "seed": 3, "batch_size": 20},
        "solver": {"time_limit_s": time_limit_s, "mip_rel_gap": 0.0},
    }
