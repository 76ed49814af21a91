"""Scenario paths on a tree (optimizer.tree): each node's segment continues its parent's exact state.

The models are those of optimizer.scenarios (BTC jump diffusion, fees AR(1), network hashrate with
difficulty retargets and halvings, power OU + spikes, curtailment events and demand-response calls);
here they are drawn segment by segment. A segment starts from the state its parent's segment ended
in, which carries everything the models remember:

- BTC: the last price; the first step of a child is one more Merton move from it;
- fees: the AR(1) log deviation;
- network: the full difficulty state (log hashrate for the next step, chain height, difficulty
  hashrate, the epoch's accumulated hashrate-hours and hours, next retarget and halving heights:
  `optimizer.scenarios._NetworkState`), so an epoch that spans a decision date retargets exactly as
  it would on one unbroken path;
- power, per market: the OU deviation X and the spike level at the last step (each child applies
  one more decay step and its own innovation), and the tail of curtailment events and
  demand-response calls that run past the segment's end (they cover the child's first steps).
  Below an hour, each segment also draws the intra-hour factor of `optimizer.scenarios` (it
  carries no state: it averages one over each hour, or over each part of an hour a date cuts).

The root carries no segment; a depth-1 node starts from today's market state exactly as
`generate_scenarios` does (price, fees, difficulty today, X from its stationary law).

Reproducibility: the segment of the node at position (c_1, ..., c_j) is drawn only from
`node_rng(seed, stream, position)` = SeedSequence(seed, spawn_key=(stream, j, c_1, ..., c_j)), and
from its parent's end state, itself a function of the parent's position alone. A node's path hence
depends on (seed, stream, position) and nothing else: not on the branching elsewhere, nor on how
nodes are batched. Within a segment the draws come in the order of optimizer.scenarios (BTC, fees,
hashrate, markets, then events and calls, market by market).

A segment's demand-response call is placed at the highest-price step of its day within the
segment (a day cut by a decision date is searched on its part before the date).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import HOURS_PER_DAY
from optimizer.market import BitcoinMarket, Horizon, PowerMarket
from optimizer.scenarios import (
    FEES_PERSISTENCE_PER_DAY,
    OPTIMIZATION_STREAM,
    ScenarioSet,
    _base_price_usd_per_mwh,
    _Calendar,
    _intra_hour_factor,
    _linear_recursion,
    _NetworkState,
    _pinned_path,
    simulate_network,
)
from optimizer.tree import ScenarioTree

PATH_KEYS = ("btc", "fees", "hashrate", "subsidy", "hashprice")
MARKET_KEYS = ("power", "available", "dr_call")


@dataclass(frozen=True)
class MarketState:
    ou_deviation: float  # X at the last step, before the -var/2 centring
    spike_level_usd_per_mwh: float  # spike level at the start of the last step
    event_fraction_tail: np.ndarray  # available share for the steps after the segment (events still running)
    event_floor_tail: np.ndarray  # price floor for those steps (-inf: none)
    call_tail: np.ndarray  # bool, demand-response call still running in those steps


@dataclass(frozen=True)
class PathState:
    """Everything a path segment's continuation needs, after its last step."""

    btc_price_usd: float
    fees_deviation: float
    network: _NetworkState
    markets: tuple[MarketState, ...]


def node_rng(seed: int, stream: int, position: Sequence[int], prefix: Sequence[int] = ()) -> np.random.Generator:
    """The only source of randomness of the tree node at `position` (child indices from the root).

    A `prefix` names the tree itself (a fresh tree's index, a look-ahead tree's evaluation node); its length
    is part of the key, so (prefix, position) pairs of different lengths never share a key.
    """
    key = (int(stream), len(position), *(int(c) for c in position))
    if prefix:
        key = (int(stream), len(prefix), *(int(c) for c in prefix), len(position), *(int(c) for c in position))
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def segment_calendar(calendar: _Calendar, first: int, stop: int) -> _Calendar:
    return dataclasses.replace(
        calendar,
        n_steps=stop - first,
        hour_slot=calendar.hour_slot[first:stop],
        year_fraction=calendar.year_fraction[first:stop],
        month=calendar.month[first:stop],
        month_index=calendar.month_index[first:stop],
    )


@dataclass(frozen=True)
class TreeScenarios:
    """The leaves' full paths (a ScenarioSet, rows in leaf order) and what each node saw at its date."""

    tree: ScenarioTree
    scenarios: ScenarioSet  # [S] leaves, indices = leaf numbers
    node_btc_price_usd: np.ndarray  # [N] BTC price at the node's decision date (the root: today's)
    node_hashprice_usd_per_ph_day: np.ndarray  # [N] mean hashprice over the 30 days before the date (root: today's)
    segments: tuple = dataclasses.field(default=(), repr=False)  # [N] each node's segment (None for the root)
    states: tuple = dataclasses.field(default=(), repr=False)  # [N] the path state after each node's segment

    @property
    def leaf_probability(self) -> np.ndarray:
        return self.tree.leaf_probability()


def generate_tree_scenarios(
    bitcoin: BitcoinMarket,
    markets: Sequence[PowerMarket],
    horizon: Horizon,
    tree: ScenarioTree,
    seed: int,
    stream: int = OPTIMIZATION_STREAM,
    *,
    given: dict | None = None,
    key_prefix: tuple[int, ...] = (),
) -> TreeScenarios:
    """Draw every node's segment from its parent's end state; the leaves' paths are their concatenations.

    `given` maps nodes to a (segment, end state) already known - a realised history, when a rolling
    policy re-plans at a later node (optimizer.rolling); `key_prefix` names the tree in each drawn node's
    seed key (`node_rng`), so fresh trees and the look-ahead trees of different nodes stay independent.
    """
    if tree.n_steps != horizon.n_steps:
        raise ValueError(f"the tree spans {tree.n_steps} steps, the horizon {horizon.n_steps}")
    calendar = _Calendar.of(horizon)
    base_prices = [_base_price_usd_per_mwh(m, calendar) for m in markets]
    pinned_hashprice = (
        _pinned_path(bitcoin.hashprice_usd_per_ph_day, calendar)
        if bitcoin.hashprice_usd_per_ph_day is not None
        else None
    )
    pinned_power = [
        _pinned_path(m.pinned_price_usd_per_mwh, calendar) if m.pinned_price_usd_per_mwh is not None else None
        for m in markets
    ]
    segments: list[dict | None] = [None] * tree.n_nodes
    states: list[PathState | None] = [None] * tree.n_nodes
    given = given or {}
    for node in range(1, tree.n_nodes):  # breadth first: a parent always comes before its children
        first, stop = tree.segment(node)
        if node in given:
            segments[node], states[node] = given[node]
            continue
        segments[node], states[node] = draw_segment(
            node_rng(seed, stream, tree.position[node], key_prefix),
            bitcoin,
            markets,
            base_prices,
            calendar,
            first,
            stop,
            states[tree.parent[node]],
        )
        for m, pinned in enumerate(pinned_power):
            if pinned is not None:
                segments[node]["power"][m] = pinned[first:stop]
        if pinned_hashprice is not None:
            segments[node]["hashprice"] = pinned_hashprice[first:stop]
    leaves = tree.leaves
    rows = []
    for leaf in leaves:
        nodes = tree.path(leaf)[1:]
        row = {key: np.concatenate([segments[n][key] for n in nodes]) for key in PATH_KEYS}
        for key in MARKET_KEYS:
            row[key] = [np.concatenate([segments[n][key][m] for n in nodes]) for m in range(len(markets))]
        rows.append(row)
    scenarios = _scenario_set(rows, markets, horizon, leaves)
    btc, hashprice = _node_observations(tree, segments, bitcoin, horizon)
    return TreeScenarios(tree, scenarios, btc, hashprice, tuple(segments), tuple(states))


def _scenario_set(rows: list[dict], markets: Sequence[PowerMarket], horizon: Horizon, leaves) -> ScenarioSet:
    def by_market(name: str) -> np.ndarray:
        return np.ascontiguousarray(np.array([row[name] for row in rows]).transpose(1, 0, 2))

    has_events = any(m.curtailment_events for m in markets)
    has_calls = any(m.demand_response_calls is not None for m in markets)
    return ScenarioSet(
        indices=np.arange(len(leaves), dtype=np.int64),
        step_hours=horizon.step_hours,
        btc_price_usd=np.array([r["btc"] for r in rows]),
        network_hashrate_ehs=np.array([r["hashrate"] for r in rows]),
        fees_btc_per_block=np.array([r["fees"] for r in rows]),
        subsidy_btc=np.array([r["subsidy"] for r in rows]),
        hashprice_usd_per_ph_day=np.array([r["hashprice"] for r in rows]),
        markets=tuple(m.id for m in markets),
        power_price_usd_per_mwh=np.array([r["power"] for r in rows]).transpose(1, 0, 2).copy(),
        available_power_fraction=by_market("available") if has_events else None,
        dr_call=by_market("dr_call").astype(bool) if has_calls else None,
    )


def _node_observations(tree: ScenarioTree, segments, bitcoin: BitcoinMarket, horizon: Horizon):
    """BTC price and trailing 30-day mean hashprice at each node's decision date, from its history."""
    from optimizer.scenarios import hashprice_usd_per_ph_day

    today = float(
        hashprice_usd_per_ph_day(
            bitcoin.btc_price_usd,
            bitcoin.network_hashrate_ehs,
            _subsidy_today(bitcoin),
            bitcoin.fees_btc_per_block,
        )
    )
    if bitcoin.hashprice_usd_per_ph_day is not None:
        today = float(np.ravel(bitcoin.hashprice_usd_per_ph_day)[0])
    window = max(1, round(30 * HOURS_PER_DAY / horizon.step_hours))
    btc = np.full(tree.n_nodes, float(bitcoin.btc_price_usd))
    hashprice = np.full(tree.n_nodes, today)
    for node in range(1, tree.n_nodes):
        history = np.concatenate([segments[n]["hashprice"] for n in tree.path(node)[1:]])
        btc[node] = float(segments[node]["btc"][-1])
        hashprice[node] = float(history[-window:].mean())
    return btc, hashprice


def _subsidy_today(bitcoin: BitcoinMarket) -> float:
    from optimizer.constants import block_subsidy_btc

    return float(block_subsidy_btc(int(bitcoin.start_block_height)))


def draw_segment(
    rng: np.random.Generator,
    bitcoin: BitcoinMarket,
    markets: Sequence[PowerMarket],
    base_prices: Sequence[np.ndarray],
    calendar: _Calendar,
    first: int,
    stop: int,
    state: PathState | None,
) -> tuple[dict, PathState]:
    """The steps [first, stop) of one path from `state` (None: today's market), and the state after them."""
    cal = segment_calendar(calendar, first, stop)
    n = stop - first
    btc = _btc_segment(rng, bitcoin, cal, None if state is None else state.btc_price_usd)
    fees, fees_deviation = _fees_segment(rng, bitcoin, cal, None if state is None else state.fees_deviation)
    network = simulate_network(
        bitcoin, btc, fees, rng.standard_normal(n), cal.step_hours, None if state is None else state.network
    )
    power, market_states = [], []
    for m, market in enumerate(markets):
        before = None if state is None else state.markets[m]
        price, ou, spike = _power_segment(rng, market, base_prices[m][first:stop], cal, first, before)
        power.append(price)
        market_states.append((ou, spike))
    available, calls, tails = [], [], []
    for m, market in enumerate(markets):
        before = None if state is None else state.markets[m]
        fraction, floor_tail, fraction_tail = _events_segment(rng, market, power[m], cal, before)
        called, call_tail = _calls_segment(rng, market, power[m], cal, first, before)
        available.append(fraction)
        calls.append(called)
        tails.append((fraction_tail, floor_tail, call_tail))
    end = PathState(
        btc_price_usd=float(btc[-1]),
        fees_deviation=fees_deviation,
        network=network.end_state,
        markets=tuple(
            MarketState(ou, spike, f_tail, floor_tail, c_tail)
            for (ou, spike), (f_tail, floor_tail, c_tail) in zip(market_states, tails, strict=True)
        ),
    )
    segment = {
        "btc": btc,
        "fees": fees,
        "hashrate": network.hashrate_ehs,
        "subsidy": network.subsidy_btc,
        "hashprice": network.hashprice_usd_per_ph_day,
        "power": power,
        "available": available,
        "dr_call": calls,
    }
    return segment, end


def _btc_segment(rng, bitcoin: BitcoinMarket, cal: _Calendar, last_price: float | None) -> np.ndarray:
    """Merton moves: from today's price (no move into the first step) or one move on from `last_price`."""
    n_moves = cal.n_steps - 1 if last_price is None else cal.n_steps
    dt = cal.dt_years
    sigma, intensity = bitcoin.price_vol_per_year, bitcoin.jump_intensity_per_year
    mean_jump_return = np.expm1(bitcoin.jump_mean_log + bitcoin.jump_std_log**2 / 2)
    drift = (bitcoin.price_drift_per_year - sigma**2 / 2 - intensity * mean_jump_return) * dt
    diffusion = sigma * np.sqrt(dt) * rng.standard_normal(n_moves)
    jump_counts = rng.poisson(intensity * dt, n_moves)
    jump_noise = rng.standard_normal(n_moves)
    jumps = jump_counts * bitcoin.jump_mean_log + np.sqrt(jump_counts) * bitcoin.jump_std_log * jump_noise
    moves = np.cumsum(drift + diffusion + jumps)
    if last_price is None:
        return bitcoin.btc_price_usd * np.exp(np.concatenate(([0.0], moves)))
    return last_price * np.exp(moves)


def _fees_segment(rng, bitcoin: BitcoinMarket, cal: _Calendar, deviation: float | None) -> tuple[np.ndarray, float]:
    noise = rng.standard_normal(cal.n_steps)
    if bitcoin.fees_btc_per_block == 0 or bitcoin.fees_vol == 0:
        return np.full(cal.n_steps, bitcoin.fees_btc_per_block), 0.0
    persistence = FEES_PERSISTENCE_PER_DAY ** (cal.step_hours / HOURS_PER_DAY)
    log_std = bitcoin.fees_vol
    innovations = log_std * np.sqrt(1 - persistence**2) * noise
    if deviation is None:
        innovations[0] = log_std**2 / 2  # today's level, as optimizer.scenarios
    else:
        innovations[0] += persistence * deviation
    path = _linear_recursion(persistence, innovations)
    return bitcoin.fees_btc_per_block * np.exp(path - log_std**2 / 2), float(path[-1])


def _power_segment(rng, market: PowerMarket, base: np.ndarray, cal: _Calendar, first: int, before: MarketState | None):
    n = cal.n_steps
    dt_days = cal.step_hours / HOURS_PER_DAY
    decay = np.exp(-market.reversion_per_day * dt_days)
    stationary_var = market.vol_per_sqrt_day**2 / (2 * market.reversion_per_day)
    innovations = np.sqrt(stationary_var * (1 - decay**2)) * rng.standard_normal(n)
    if before is None:
        innovations[0] = np.sqrt(stationary_var) * rng.standard_normal()
    else:
        innovations[0] += decay * before.ou_deviation
    ou = _linear_recursion(decay, innovations)
    step_hours, tau = cal.step_hours, market.spike_decay_hours
    start_prob = 1 - (1 - market.spike_prob_per_hour) ** step_hours
    starts = rng.random(n) < start_prob
    sizes = rng.exponential(market.spike_mean_usd_per_mwh, n)
    spike_decay = np.exp(-step_hours / tau)
    inputs = np.where(starts, sizes, 0.0)
    if before is not None:
        inputs[0] += spike_decay * before.spike_level_usd_per_mwh
    level = _linear_recursion(spike_decay, inputs)
    spikes = level * tau / step_hours * (1 - spike_decay)
    smooth = base * np.exp(ou - stationary_var / 2)
    if cal.steps_per_hour > 1:  # drawn last, only below an hour (as in scenarios.py): hourly trees keep their draws
        smooth = smooth * _intra_hour_factor(rng, market, cal, first)
    price = np.clip(smooth + spikes, market.floor_usd_per_mwh, market.cap_usd_per_mwh)
    return price, float(ou[-1]), float(level[-1])


def _events_segment(rng, market: PowerMarket, price: np.ndarray, cal: _Calendar, before: MarketState | None):
    """[n] available share (raises `price` to event floors in place), and the tails past the segment."""
    n = cal.n_steps
    available, floor = np.ones(n), np.full(n, -np.inf)
    if before is not None and len(before.event_fraction_tail):
        inherited = min(n, len(before.event_fraction_tail))
        available[:inherited] = before.event_fraction_tail[:inherited]
        floor[:inherited] = before.event_floor_tail[:inherited]
        tail_fraction = list(before.event_fraction_tail[inherited:])
        tail_floor = list(before.event_floor_tail[inherited:])
    else:
        tail_fraction, tail_floor = [], []
    for kind in market.curtailment_events:
        season = np.flatnonzero(cal.in_months(kind.months))
        count = rng.poisson(cal.expected_count(kind.events_per_year, kind.months)) if len(season) else 0
        starts = rng.choice(season, size=count) if count else np.empty(0, dtype=np.int64)
        hours = rng.exponential(kind.mean_duration_hours, count)
        kind_floor = -np.inf if kind.price_floor_usd_per_mwh is None else kind.price_floor_usd_per_mwh
        for start, duration_hours in zip(starts, hours, strict=True):
            stop = int(start) + max(1, int(np.ceil(duration_hours / cal.step_hours)))
            available[start:stop] = np.minimum(available[start:stop], kind.available_fraction)
            floor[start:stop] = np.maximum(floor[start:stop], kind_floor)
            over = stop - n
            if over > 0:
                if len(tail_fraction) < over:
                    tail_fraction += [1.0] * (over - len(tail_fraction))
                    tail_floor += [-np.inf] * (over - len(tail_floor))
                for i in range(over):
                    tail_fraction[i] = min(tail_fraction[i], kind.available_fraction)
                    tail_floor[i] = max(tail_floor[i], kind_floor)
    np.maximum(price, floor, out=price)
    return available, np.array(tail_floor), np.array(tail_fraction)


def _calls_segment(rng, market: PowerMarket, price: np.ndarray, cal: _Calendar, first: int, before: MarketState | None):
    n = cal.n_steps
    called = np.zeros(n, dtype=bool)
    tail: list[bool] = []
    if before is not None and len(before.call_tail):
        inherited = min(n, len(before.call_tail))
        called[:inherited] = before.call_tail[:inherited]
        tail = list(before.call_tail[inherited:])
    calls = market.demand_response_calls
    if calls is None:
        return called, np.array(tail, dtype=bool)
    steps_per_day = round(HOURS_PER_DAY / cal.step_hours)
    day_starts = np.flatnonzero((first + np.arange(n)) % steps_per_day == 0)  # days that begin in the segment
    in_season = day_starts[cal.in_months(calls.months)[day_starts]]
    count = rng.poisson(cal.expected_count(calls.calls_per_year, calls.months)) if len(in_season) else 0
    length = int(np.ceil(calls.call_hours / cal.step_hours))
    for day_first in rng.choice(in_season, size=count) if count else ():
        peak = int(day_first) + int(np.argmax(price[day_first : day_first + steps_per_day]))
        called[peak : peak + length] = True
        over = peak + length - n
        if over > 0:
            tail += [False] * (over - len(tail))
            for i in range(over):
                tail[i] = True
    return called, np.array(tail, dtype=bool)
