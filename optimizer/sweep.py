"""Sweeps of fleet inputs: which inputs, which points, and the tornado of their swings. Pure, no I/O.

An input is named on the command line as KEY=LO:HI:N (N evenly spaced values from LO to HI) or
KEY=V1,V2,...; KEY is one of
- `btc_price`                 bitcoin.btc_price_usd (the start of the BTC paths)
- `hashprice`                 bitcoin.hashprice_usd_per_ph_day: pins the hashprice (docs/scenarios.md)
- `power.<market>`            the market's mean_price_usd_per_mwh (the level its spot paths revert to)
- `power.<site>`              a fixed or take-or-pay site's contract price_usd_per_mwh; an index site's
                              market mean price (every site on that market moves with it)
- `offer.<id>.rate`           lease_offers[id].rate_usd_per_kw_month
- any other dotted path into the fleet file, entries of lists named by id: `sites.texas-west.capacity_mw`,
  `rack_groups.tx-s21.opex_usd_per_rack_day`, `capital_budget_usd`.
Points: one-at-a-time (each input over its values, the others as in the fleet file) or the full grid.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_VALUES = 200  # per input: a typo such as 0:100:1000 should not queue a thousand re-plans
MAX_POINTS = 2_000


class SweepInputError(ValueError):
    """A bad --vary; `field` names the flag and the key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class Vary:
    key: str
    values: tuple[float, ...]


def parse_vary(text: str) -> Vary:
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    field = f"--vary {text}"
    if not sep or not key or not spec:
        raise SweepInputError(field, "expected KEY=LO:HI:N or KEY=V1,V2,...")
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) != 3:
                raise ValueError
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 2 or count > MAX_VALUES:
                raise SweepInputError(field, f"N must be 2-{MAX_VALUES} values, got {count}")
            values = tuple(float(v) for v in np.linspace(low, high, count))
        else:
            values = tuple(float(v) for v in spec.split(","))
    except SweepInputError:
        raise
    except ValueError:
        raise SweepInputError(field, "expected KEY=LO:HI:N (N values) or KEY=V1,V2,... with numbers") from None
    return Vary(key, values)


def _find_by_id(items: list, ident: str, where: str) -> dict:
    for item in items:
        if isinstance(item, dict) and item.get("id") == ident:
            return item
    known = [i.get("id") for i in items if isinstance(i, dict)]
    raise SweepInputError(where, f"no entry with id {ident!r} (known: {known})")


def _generic_target(data: dict, key: str) -> tuple[dict, str]:
    """The dict and field a dotted path names; list entries are matched by id (ids may hold dots)."""
    tokens = key.split(".")
    node: Any = data
    i = 0
    while i < len(tokens) - 1:
        if isinstance(node, list):
            for j in range(len(tokens) - 1, i, -1):  # longest id first
                ident = ".".join(tokens[i:j])
                match = next((x for x in node if isinstance(x, dict) and x.get("id") == ident), None)
                if match is not None:
                    node, i = match, j
                    break
            else:
                raise SweepInputError(key, f"no entry with id {tokens[i]!r} under {'.'.join(tokens[:i])}")
            continue
        if not isinstance(node, dict) or tokens[i] not in node:
            raise SweepInputError(key, f"unknown input {key!r} (at {tokens[i]!r})")
        node = node[tokens[i]]
        if node is None:
            raise SweepInputError(key, f"{'.'.join(tokens[: i + 1])} is not set in the fleet file")
        i += 1
    if not isinstance(node, dict) or tokens[-1] not in node:
        raise SweepInputError(key, f"unknown input {key!r}")
    return node, tokens[-1]


def target(data: dict, key: str) -> tuple[dict, str]:
    """(container, field) in the fleet data (model_dump(mode="json")) that the sweep key sets."""
    if key == "btc_price":
        return data["bitcoin"], "btc_price_usd"
    if key == "hashprice":
        return data["bitcoin"], "hashprice_usd_per_ph_day"
    head, _, rest = key.partition(".")
    if head == "power" and rest:
        markets = {m["id"]: m for m in data["markets"]}
        if rest in markets:
            return markets[rest], "mean_price_usd_per_mwh"
        site = next((s for s in data["sites"] if s["id"] == rest), None)
        if site is None:
            known = sorted([*markets, *(s["id"] for s in data["sites"])])
            raise SweepInputError(key, f"power.{rest}: no market or site {rest!r} (known: {known})")
        if site["contract"]["type"] in ("fixed", "take_or_pay"):
            return site["contract"], "price_usd_per_mwh"
        return markets[site["market"]], "mean_price_usd_per_mwh"
    if head == "offer" and rest:
        ident, _, field = rest.rpartition(".")
        if not ident or field != "rate":
            raise SweepInputError(key, "expected offer.<id>.rate (other offer fields: lease_offers.<id>.<field>)")
        return _find_by_id(data.get("lease_offers", []), ident, key), "rate_usd_per_kw_month"
    return _generic_target(data, key)


def base_value(data: dict, key: str) -> float | None:
    container, field = target(data, key)
    value = container.get(field)
    if isinstance(value, list) and len(value) == 1:  # a pinned level
        value = value[0]
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def apply_inputs(data: dict, inputs: dict[str, float]) -> dict:
    """A copy of the fleet data with the inputs set."""
    out = copy.deepcopy(data)
    for key, value in inputs.items():
        container, field = target(out, key)
        current = container.get(field)
        container[field] = int(round(value)) if isinstance(current, int) and not isinstance(current, bool) else value
    return out


def sweep_points(varies: list[Vary], grid: bool) -> list[tuple[str, dict[str, float]]]:
    """("", {}) is the base; one-at-a-time points are (key, {key: value}); grid points ("grid", {every key})."""
    if grid:
        combos = list(itertools.product(*(v.values for v in varies)))
        if len(combos) > MAX_POINTS:
            raise SweepInputError("--vary", f"the grid has {len(combos):,} points; at most {MAX_POINTS:,}")
        return [("", {}), *(("grid", dict(zip([v.key for v in varies], c, strict=True))) for c in combos)]
    return [("", {}), *((v.key, {v.key: value}) for v in varies for value in v.values)]


@dataclass(frozen=True)
class TornadoBar:
    key: str
    low_input: float
    high_input: float
    metric_at_low: float
    metric_at_high: float
    metric_min: float
    metric_max: float

    @property
    def swing(self) -> float:
        return self.metric_max - self.metric_min


def tornado(rows: list[dict], varies: list[Vary], metric: str) -> list[TornadoBar]:
    """Swing of the metric per input over its one-at-a-time points, widest first (ties: the order given)."""
    bars = []
    for order, vary in enumerate(varies):
        points = [r for r in rows if r["varied"] == vary.key and r.get(metric) is not None]
        if not points:
            continue
        points.sort(key=lambda r: r[vary.key])
        values = [r[metric] for r in points]
        bars.append(
            (
                order,
                TornadoBar(
                    key=vary.key,
                    low_input=points[0][vary.key],
                    high_input=points[-1][vary.key],
                    metric_at_low=values[0],
                    metric_at_high=values[-1],
                    metric_min=min(values),
                    metric_max=max(values),
                ),
            )
        )
    bars.sort(key=lambda ob: (-ob[1].swing, ob[0]))
    return [b for _, b in bars]
