"""Dispatch latency and Optimize wall time of a real `hashpivot serve` on loopback.

    .venv/bin/python bench/bench_dispatch.py [--calls 5000] [--fleet examples/fleet.yaml] [--no-robustness]

Starts `hashpivot serve` as a separate process (its own embedded Ray, a temporary database), plans
examples/tiny.yaml with Optimize, then sends `--calls` Dispatch calls one after another with random
site prices and hashprices, and reports:
- client-side latency: the whole unary call seen by a Python client (serialisation, HTTP/2 on
  loopback, the handler, the reply);
- server-side latency: the handler alone, from the `hashpivot-server-time-us` trailing metadata.
Then Optimize wall time for `--fleet` (client-side, and the server's own stage timings), Dispatch
on that plan (random market spot prices; then with a curtailment event and, every other call, a
demand-response call at its first take-or-pay or DR site: the coupled path), and Optimize of the
fleet again with robustness at the defaults of `hashpivot plan` (500 out-of-sample scenarios, 5 SAA
replications, 100 wait-and-see scenarios, sensitivity).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import start_server  # noqa: E402

from optimizer.fleet import Fleet, FleetError, load_fleet  # noqa: E402
from services.client import PlannerClient, fleet_message  # noqa: E402
from services.dispatcher import SERVER_TIME_METADATA  # noqa: E402


def percentiles_us(samples_s: list[float]) -> str:
    a = np.asarray(samples_s) * 1e6
    return f"p50 {np.percentile(a, 50):7.1f} us   p99 {np.percentile(a, 99):7.1f} us   max {a.max():8.1f} us"


def site_price_requests(client: PlannerClient, plan_id: str, sites: list[str], calls: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [
        client.dispatch_request(
            plan_id,
            {site: float(p) for site, p in zip(sites, rng.uniform(10, 150, len(sites)), strict=True)},
            hashprice_usd_per_ph_day=float(rng.uniform(20, 60)),
        )
        for _ in range(calls)
    ]


def market_spot_requests(
    client: PlannerClient, plan_id: str, fleet: Fleet, calls: int, event_site: str | None = None, seed: int = 2
) -> list:
    """Random spot per market; with `event_site`, a random limit there and a DR call every other request."""
    rng = np.random.default_rng(seed)
    requests = []
    for k in range(calls):
        spot = {m.id: float(rng.uniform(10, 150)) for m in fleet.markets}
        available, calls_at = {}, ()
        if event_site is not None:
            available = {event_site: float(rng.uniform(0.1, 1.0) * fleet.site(event_site).capacity_mw)}
            calls_at = (event_site,) if k % 2 else ()
        requests.append(
            client.dispatch_request(
                plan_id,
                {},
                hashprice_usd_per_ph_day=float(rng.uniform(20, 60)),
                spot_price_usd_per_mwh_by_market=spot,
                available_mw_by_site=available,
                dr_call_sites=calls_at,
            )
        )
    return requests


def bench_dispatch(client: PlannerClient, requests: list, label: str) -> None:
    for request in requests[:200]:  # warm the channel and the server's plan cache
        client.stub.Dispatch(request, timeout=5)
    client_s, server_s = [], []
    for request in requests:
        start = time.perf_counter()
        _, call = client.stub.Dispatch.with_call(request, timeout=5)
        client_s.append(time.perf_counter() - start)
        server_s.append(int(dict(call.trailing_metadata())[SERVER_TIME_METADATA]) / 1e6)
    print(f"Dispatch x {len(requests)} ({label}, sequential unary calls on loopback)")
    print(f"  server-side (handler): {percentiles_us(server_s)}")
    print(f"  client-side (round trip): {percentiles_us(client_s)}")


def optimize_fleet(client: PlannerClient, request_fleet, path: Path, robustness: dict | None = None):
    start = time.perf_counter()
    reply = client.optimize(request_fleet, robustness=robustness)
    wall_s = time.perf_counter() - start
    plan = reply.plan
    what = "with robustness" if robustness is not None else "plan only"
    print(
        f"Optimize {path.name} ({what}): {wall_s:.2f} s wall (client-side), "
        f"{sum(g.racks_mine + g.racks_ai + g.racks_idle for g in plan.allocation)} racks, "
        f"{plan.scenarios['count']} scenarios x {plan.horizon_days} days, solver {plan.solver.status}, "
        f"gap {plan.solver.mip_gap:.1e}"
    )
    print("  server stages: " + ", ".join(f"{k} {v:.2f}" for k, v in plan.timings_s.items()))
    if plan.robustness is not None:
        print("  robustness stages: " + ", ".join(f"{k} {v:.2f}" for k, v in plan.robustness.timings_s.items()))
    return reply


def event_site_of(fleet: Fleet) -> str | None:
    """A site where an event or a call matters: one with a demand-response programme, else take-or-pay."""
    for site in fleet.sites:
        if site.demand_response is not None:
            return site.id
    return next((s.id for s in fleet.sites if s.contract.type.value == "take_or_pay"), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--fleet", type=Path, default=ROOT / "examples" / "fleet.yaml")
    parser.add_argument("--no-robustness", action="store_true", help="skip the Optimize with robustness")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        process, target = start_server(["--insecure", "--host", "127.0.0.1", "--db", str(Path(tmp) / "bench.sqlite")])
        print(f"server up on {target} in {time.perf_counter() - start:.1f} s (embedded Ray start included)")
        try:
            with PlannerClient(target, timeout_s=600) as client:
                start = time.perf_counter()
                tiny = client.optimize(ROOT / "examples" / "tiny.yaml")
                first_s = time.perf_counter() - start
                print(f"Optimize examples/tiny.yaml (first call, Ray workers start): {first_s:.2f} s")
                start = time.perf_counter()
                tiny = client.optimize(ROOT / "examples" / "tiny.yaml")
                print(f"Optimize examples/tiny.yaml (warm): {time.perf_counter() - start:.2f} s")
                sites = sorted({g.site for g in tiny.plan.allocation})
                bench_dispatch(client, site_price_requests(client, tiny.plan_id, sites, args.calls), "tiny plan")

                try:
                    request_fleet = fleet_message(args.fleet)
                except FleetError as exc:
                    print(f"Optimize {args.fleet}: not sent, the contract cannot carry this fleet yet: {exc}")
                    return 1
                fleet = load_fleet(args.fleet)
                big = optimize_fleet(client, request_fleet, args.fleet)
                label = f"{args.fleet.name} plan, {sum(1 for g in big.plan.allocation if g.racks_mine)} mining groups"
                bench_dispatch(client, market_spot_requests(client, big.plan_id, fleet, args.calls), label)
                site = event_site_of(fleet)
                if site is not None:
                    requests = market_spot_requests(client, big.plan_id, fleet, args.calls, event_site=site)
                    bench_dispatch(client, requests, f"{label}, event at {site}, DR call every other call")
                if not args.no_robustness:
                    optimize_fleet(client, request_fleet, args.fleet, robustness={})
        finally:
            process.terminate()
            process.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
