"""Scenario files: users' own price paths in, the scenarios a plan used out. One NPZ format.

The format is documented in docs/scenarios.md. Every [S, T] array has one row per scenario
and one column per step (`step_minutes`, or the older `step_hours`). On load a file may carry the hashprice itself, or
the BTC price and network hashrate to derive it from (treating the network hashrate as the
hashrate the difficulty is tuned to). Grid events and demand-response calls are optional per-market
arrays; absent means none. Every problem raises ScenarioFileError naming the array.
Files are read with allow_pickle=False: a scenario file can never run code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import BinaryIO

import numpy as np

from optimizer.constants import block_subsidy_btc
from optimizer.market import MINUTES_PER_HOUR, STEP_HOURS_ALLOWED, STEP_MINUTES_ALLOWED, BitcoinMarket
from optimizer.scenarios import ScenarioSet, hashprice_usd_per_ph_day

POWER_PRICE_PREFIX = "power_price_usd_per_mwh__"
AVAILABLE_PREFIX = "available_power_fraction__"  # optional per market: share of capacity available (1: no event)
DR_CALL_PREFIX = "dr_call__"  # optional per market: 1 where demand response is called, else 0
MARKET_PREFIXES = (POWER_PRICE_PREFIX, AVAILABLE_PREFIX, DR_CALL_PREFIX)
BTC_PRICE = "btc_price_usd"
HASHRATE = "network_hashrate_ehs"
FEES = "fees_btc_per_block"
SUBSIDY = "subsidy_btc"
HASHPRICE = "hashprice_usd_per_ph_day"
STEP_HOURS = "step_hours"
STEP_MINUTES = "step_minutes"
INDICES = "indices"
PATH_ARRAYS = (HASHPRICE, BTC_PRICE, HASHRATE, FEES, SUBSIDY)
# optional: the rows are the leaves of a scenario tree (optimizer.tree_io, docs/scenarios.md)
TREE_ARRAYS = ("tree_decision_steps", "tree_parent", "tree_probability", "tree_leaf_node")

# Defaults for files that leave out fees or subsidy: the calibrated market of early 2026
# (0.025 BTC fees per block; 3.125 BTC subsidy until block 1,050,000).
DEFAULT_FEES_BTC_PER_BLOCK = BitcoinMarket.model_fields["fees_btc_per_block"].default
DEFAULT_SUBSIDY_BTC = float(block_subsidy_btc(BitcoinMarket.model_fields["start_block_height"].default))


class ScenarioFileError(ValueError):
    """A scenario file is unusable; `field` names the offending array (None: the file itself)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def power_price_array_name(market_id: str) -> str:
    return POWER_PRICE_PREFIX + market_id


def save_scenarios(path: str | os.PathLike | BinaryIO, scenarios: ScenarioSet) -> None:
    """Write `scenarios` to `path` (exactly that name: no .npz is appended), or to an open binary file."""
    arrays = {name: getattr(scenarios, name) for name in PATH_ARRAYS}
    for market_id in scenarios.markets:
        arrays[power_price_array_name(market_id)] = scenarios.power_price(market_id)
        if scenarios.available_power_fraction is not None:
            arrays[AVAILABLE_PREFIX + market_id] = scenarios.available_fraction(market_id)
        if scenarios.dr_call is not None:
            arrays[DR_CALL_PREFIX + market_id] = scenarios.dr_called(market_id)
    minutes = round(scenarios.step_hours * MINUTES_PER_HOUR)
    arrays[STEP_MINUTES] = np.int64(minutes)
    if minutes % MINUTES_PER_HOUR == 0:  # whole hours: also the older key, for readers that predate minutes
        arrays[STEP_HOURS] = np.int64(minutes // MINUTES_PER_HOUR)
    arrays[INDICES] = np.asarray(scenarios.indices, dtype=np.int64)
    # uncompressed: random float paths barely compress, and saving stays fast for big sets
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_scenarios(
    path: str | os.PathLike | BinaryIO,
    required_markets: Sequence[str] | None = None,
    expected_steps: int | None = None,
    expected_step_hours: float | None = None,
) -> ScenarioSet:
    """Read and validate a scenario file (a path, or an open binary file such as an upload's bytes);
    power markets keep the file's order."""
    arrays = _read_arrays(path)
    _reject_unknown_arrays(arrays)
    step_hours = _step_hours(arrays, expected_step_hours)
    market_names = [name for name in arrays if name.startswith(POWER_PRICE_PREFIX)]
    shape = _common_shape(arrays, [*PATH_ARRAYS, *market_names], expected_steps)
    bitcoin = _bitcoin_paths(arrays, shape)
    for market_id in required_markets or ():
        if power_price_array_name(market_id) not in arrays:
            present = [name[len(POWER_PRICE_PREFIX) :] for name in market_names]
            raise ScenarioFileError(
                power_price_array_name(market_id),
                f"missing: the fleet buys power in market {market_id!r}, the file has markets {present}",
            )
    power = [_finite(arrays, name) for name in market_names]
    markets = tuple(name[len(POWER_PRICE_PREFIX) :] for name in market_names)
    return ScenarioSet(
        indices=_indices(arrays, shape[0]),
        step_hours=step_hours,
        markets=markets,
        power_price_usd_per_mwh=np.array(power, dtype=np.float64).reshape(len(power), *shape),
        available_power_fraction=_event_arrays(arrays, AVAILABLE_PREFIX, markets, shape, _fraction, 1.0),
        dr_call=_event_arrays(arrays, DR_CALL_PREFIX, markets, shape, _zero_one, False),
        **bitcoin,
    )


def _event_arrays(
    arrays: Mapping[str, np.ndarray], prefix: str, markets: tuple[str, ...], shape: tuple[int, int], read, default
) -> np.ndarray | None:
    """[M, S, T] from the optional per-market arrays; markets without one get the no-event default."""
    names = [name for name in arrays if name.startswith(prefix)]
    if not names:
        return None
    for name in names:
        if name[len(prefix) :] not in markets:
            raise ScenarioFileError(name, f"names market {name[len(prefix) :]!r}, which has no power price array")
        if arrays[name].shape != shape or arrays[name].dtype.kind not in "iufb":
            raise ScenarioFileError(
                name, f"must be numbers of shape {shape} like the paths, got {arrays[name].dtype} {arrays[name].shape}"
            )
    return np.array([read(arrays, prefix + m) if prefix + m in arrays else np.full(shape, default) for m in markets])


def _fraction(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    values = _finite(arrays, name)
    return _check_bound(name, values, (values < 0) | (values > 1), "must lie in [0, 1] (1: no event)")


def _zero_one(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    values = _finite(arrays, name)
    _check_bound(name, values, (values != 0) & (values != 1), "must be 0 or 1 (1: demand response called)")
    return values == 1


def _read_arrays(path: str | os.PathLike | BinaryIO) -> dict[str, np.ndarray]:
    name = "the upload" if hasattr(path, "read") else os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ScenarioFileError(None, f"cannot read {name} as an NPZ archive: {error}") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ScenarioFileError(None, f"{name} holds a single array, not an NPZ archive of named arrays")
    with loaded:
        return {name: _read_member(loaded, name) for name in loaded.files}


def _read_member(archive: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as error:  # object arrays need pickle, which is refused
        raise ScenarioFileError(name, f"unreadable without pickle ({error}); store plain numbers") from error


def _reject_unknown_arrays(arrays: Mapping[str, np.ndarray]) -> None:
    known = {*PATH_ARRAYS, STEP_HOURS, STEP_MINUTES, INDICES, *TREE_ARRAYS}
    for name in arrays:
        if name in MARKET_PREFIXES:
            raise ScenarioFileError(name, "per-market array without a market id after the '__'")
        if name not in known and not name.startswith(MARKET_PREFIXES):
            per_market = ", ".join(prefix + "<market_id>" for prefix in MARKET_PREFIXES)
            raise ScenarioFileError(name, f"unknown array; expected {sorted(known)} and {per_market}")


def _step_hours(arrays: Mapping[str, np.ndarray], expected: float | None) -> float:
    """The step length in hours, from `step_minutes` or `step_hours` (both present: they must agree)."""
    if STEP_HOURS not in arrays and STEP_MINUTES not in arrays:
        raise ScenarioFileError(
            STEP_MINUTES,
            f"missing: the length of a step, step_minutes one of {STEP_MINUTES_ALLOWED} "
            f"(or step_hours one of {STEP_HOURS_ALLOWED})",
        )
    minutes = {}
    for name, allowed, per in ((STEP_MINUTES, STEP_MINUTES_ALLOWED, 1), (STEP_HOURS, STEP_HOURS_ALLOWED, 60)):
        if name not in arrays:
            continue
        value = arrays[name]
        unit = "minutes" if per == 1 else "hours"
        if value.size != 1 or value.dtype.kind not in "iuf" or not float(value.item()).is_integer():
            raise ScenarioFileError(name, f"must be a single whole number of {unit}, got {value!r}")
        if int(value.item()) not in allowed:
            raise ScenarioFileError(name, f"must be one of {allowed}, got {int(value.item())}")
        minutes[name] = int(value.item()) * per
    if len(set(minutes.values())) > 1:
        raise ScenarioFileError(
            STEP_HOURS, f"is {minutes[STEP_HOURS] // 60} h but step_minutes is {minutes[STEP_MINUTES]}"
        )
    name, step_minutes = next(iter(minutes.items()))
    step_hours = step_minutes / MINUTES_PER_HOUR
    if expected is not None and abs(step_hours - expected) > 1e-9:
        if name == STEP_HOURS:
            raise ScenarioFileError(name, f"is {step_hours:g} h but the horizon uses {expected:g} h steps")
        raise ScenarioFileError(
            name, f"is {step_minutes} min but the horizon uses {round(expected * MINUTES_PER_HOUR)} min steps"
        )
    return step_hours


def _common_shape(arrays: Mapping[str, np.ndarray], names: Sequence[str], expected_steps: int | None):
    """The [S, T] shape every path array shares, checked against the first one present."""
    present = [name for name in names if name in arrays]
    if not present:
        raise ScenarioFileError(HASHPRICE, f"missing: give {HASHPRICE}, or {BTC_PRICE} and {HASHRATE}")
    reference = present[0]
    for name in present:
        array = arrays[name]
        if array.ndim != 2:
            raise ScenarioFileError(name, f"must be 2-D [scenarios, steps], got shape {array.shape}")
        if array.dtype.kind not in "iuf":
            raise ScenarioFileError(name, f"must hold numbers, got dtype {array.dtype}")
        if array.shape != arrays[reference].shape:
            raise ScenarioFileError(
                name, f"has shape {array.shape} but {reference} has {arrays[reference].shape}; all must agree"
            )
    n_scenarios, n_steps = arrays[reference].shape
    if n_scenarios == 0 or n_steps == 0:
        raise ScenarioFileError(reference, f"is empty (shape {arrays[reference].shape})")
    if expected_steps is not None and n_steps != expected_steps:
        raise ScenarioFileError(reference, f"has {n_steps} steps but the horizon has {expected_steps}")
    return n_scenarios, n_steps


def _bitcoin_paths(arrays: Mapping[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    fees = _non_negative(arrays, FEES) if FEES in arrays else np.full(shape, DEFAULT_FEES_BTC_PER_BLOCK)
    subsidy = _non_negative(arrays, SUBSIDY) if SUBSIDY in arrays else np.full(shape, DEFAULT_SUBSIDY_BTC)
    if HASHPRICE in arrays:
        # with the hashprice given, price and hashrate are informational: absent or NaN means unknown
        hashprice = _positive(arrays, HASHPRICE)
        btc = _positive(arrays, BTC_PRICE, nan_allowed=True) if BTC_PRICE in arrays else np.full(shape, np.nan)
        hashrate = _positive(arrays, HASHRATE, nan_allowed=True) if HASHRATE in arrays else np.full(shape, np.nan)
    else:
        for name in (BTC_PRICE, HASHRATE):
            if name not in arrays:
                raise ScenarioFileError(name, f"missing: give {HASHPRICE}, or {BTC_PRICE} and {HASHRATE}")
        btc, hashrate = _positive(arrays, BTC_PRICE), _positive(arrays, HASHRATE)
        hashprice = hashprice_usd_per_ph_day(btc, hashrate, subsidy, fees)
    return {
        BTC_PRICE: btc,
        HASHRATE: hashrate,
        FEES: fees,
        SUBSIDY: subsidy,
        HASHPRICE: hashprice,
    }


def _finite(arrays: Mapping[str, np.ndarray], name: str, nan_allowed: bool = False) -> np.ndarray:
    values = np.asarray(arrays[name], dtype=np.float64)
    bad = np.isinf(values) if nan_allowed else ~np.isfinite(values)
    if bad.any():
        scenario, step = np.argwhere(bad)[0]
        raise ScenarioFileError(
            name, f"has {values[scenario, step]} at scenario {scenario}, step {step}; every value must be finite"
        )
    return values


def _positive(arrays: Mapping[str, np.ndarray], name: str, nan_allowed: bool = False) -> np.ndarray:
    values = _finite(arrays, name, nan_allowed)
    return _check_bound(name, values, values <= 0, "must be positive")


def _non_negative(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    values = _finite(arrays, name)
    return _check_bound(name, values, values < 0, "must not be negative")


def _check_bound(name: str, values: np.ndarray, bad: np.ndarray, rule: str) -> np.ndarray:
    if bad.any():
        scenario, step = np.argwhere(bad)[0]
        raise ScenarioFileError(name, f"{rule}, got {values[scenario, step]} at scenario {scenario}, step {step}")
    return values


def _indices(arrays: Mapping[str, np.ndarray], n_scenarios: int) -> np.ndarray:
    if INDICES not in arrays:
        return np.arange(n_scenarios, dtype=np.int64)
    indices = arrays[INDICES]
    if indices.shape != (n_scenarios,) or indices.dtype.kind not in "iu":
        raise ScenarioFileError(
            INDICES, f"must be {n_scenarios} integers, one per scenario; got {indices.dtype} of shape {indices.shape}"
        )
    if np.any(indices < 0) or len(np.unique(indices)) != n_scenarios:
        raise ScenarioFileError(INDICES, "must be distinct non-negative scenario numbers")
    return indices.astype(np.int64)
