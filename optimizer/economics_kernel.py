"""The economics of a chunk of scenarios in one compiled pass over its arrays (numba), for large runs.

optimizer.economics prices a chunk with numpy: per site, one run mask per distinct threshold and a
matrix product per period, a dozen passes over [S, T] arrays per site. Here each scenario's row is read
once: its hashprice and BTC price give the weights every site shares (hashprice per TH-hour, the same
discounted, BTC per TH/s-step); then per site, the step keys (price / hashprice per TH-hour) and, per
distinct run threshold theta_u and period, the weights summed over the steps with key < theta_u, in one
branch-free loop that LLVM vectorises (masked sums: one masked vector add per weight and threshold). A site
that follows spot sums its price and discounted price (its cost), a fixed-price site the count and the
discount factor (its cost is the price times those): six weights or five. A row without an event or a call
step computes its keys inside the sums, four thresholds per loop; a row with one writes its keys first (the
coupled-step scan reads them and sets the coupled steps' to inf), then sums in pairs. No array of size
profiles x steps, no [S, T] temporaries: per chunk, four rows of T floats of scratch.

The same pass finds the coupled steps (an event's cap or a demand-response call can bind: the load of
every profile that runs at the key, plus the largest AI load once a hall could be live, exceeds what the
site may draw), counts them as run steps and their candidate racks per scenario, and leaves them out of the
sums; it sums the take-or-pay resale (spot - fee) per period and over the last year, the hashprice per
scenario, and finds the halving step (a branch-free count per block of 64 steps). Events and calls are rare:
a branch-free count per row and per block of 64 steps skips the rows and blocks without one, and the points
go to arrays that double when full (their number is known only after the pass). A second loop writes the
coupled slots and their candidate racks (items) in one walk over the points, which the pass leaves in
(scenario, site, step) order and whose items it counted, each scenario's row padded; a third writes every
profile's [Q, P, S] fields from per-threshold rows with the scenarios contiguous (one write per value).

Where the time goes (1 December 2026, this 2-core machine at load ~2.7, warmed numba, CPU time of the chunks
of bench/bench_pipeline.py section 2, best of five; one read of the same arrays in brackets):
- 1,000 groups x 1,000 scenarios hourly with events (nine chunks of 114 x 2,184 steps, four sites on four
  markets, four thresholds each, ~760 coupled points and ~162,000 items a chunk): 43 ms (read 7.7): the pass
  22 ms, the coupled slots and items 12 ms (their [S, I] tables are 114 x 4,376 a chunk, two thirds padding,
  12 MB written a chunk), the profile outputs 5 ms (7 x 1,000 x 114 values a chunk, 6.4 MB), the Python and
  numba's dispatch around the three compiled calls 4 ms;
- the same without events: 22 ms (read 4.4): the pass 14, the profile outputs 5, the rest 3;
- 300 groups x 200 scenarios at 15 minutes with events (eight chunks of 28 x 8,736 steps): 22 ms (read 6.2):
  the pass 15, the items 3, the rest 3; without events 14 ms (read 3.9): the pass 11, the rest 3.
The pass is the floor: its masked sums run ~0.9 ns per site and step for four thresholds of six weights (the
masked adds issue ~1.25 vector ops per cycle), ~1.4x the read on their own; the divisions (three per step for
the shared weights and one per site and step for the keys, kept as divisions so every key is bit for bit the
numpy path's) ~0.3x; and the pass streams the same bytes the read does, without overlapping that with the
sums. So the pass alone is ~2.8-2.9x the read, and the outputs, which the read does not write, ~2x more at
1,000 groups (figures and ratios in docs/pipeline.md). Written into fresh pages (a process that keeps every
chunk's outputs), the outputs cost far more: ~2.5 us per 4 KiB page fault on this VM.
What this round cut (same bench, same load): the masked sums as a select of the sum, which LLVM compiles to
one AVX-512 merge-masked add per weight (~0.24 ns per step, threshold and six weights; the product with a 0/1
mask took ~0.36: a multiply and an add, as 0 x inf = nan keeps LLVM from dropping it); the price summed
instead of spot and discount at spot sites; the keys inside the sums of rows that couple nowhere, four
thresholds per loop (~10-15% of the pass); the halving by block counts (a scalar loop with an exit test per
step took ~2 ms of the first row); and in optimizer.economics the per-site tables once per grid and the slots
built from the pass's ordered points in the compiled item loop (no split per site, lexsort and numpy fills).
Tried and not kept: per-step scatter into per-bucket accumulators instead of masked sums (2.5x slower in
numba: not vectorised); tiling the steps so a tile stays in L1 across thresholds (slower); software prefetch
of the next scenario's rows during the sums (llvm.prefetch: no faster, slower at 15-minute rows, whose next
rows and working set together overflow L2); the weights and every site's keys in one blocked loop (slower).

Compiled once per machine: numba caches the machine code next to this file (`cache=True`), so a later
process only loads it. Divisions follow numpy's error model (x / 0 is inf or nan, no exception), as the
numpy path's do. This module imports numba: optimizer.economics imports it only for runs large enough to
pay for that (KERNEL_MIN_SITE_CELLS); small runs stay on numpy.
"""

from __future__ import annotations

import numba
import numpy as np

from optimizer.constants import HOURS_PER_DAY, KW_PER_MW, TH_PER_PH

# weight sums per (scenario, site, threshold, period): what the steps a profile of the threshold runs in add. A site
# whose price follows spot sums its price and discounted price (its cost); a fixed-price site's cost is its price
# times the count and the discount sum, so it sums those instead: six weights or five, never seven
W_HASHPRICE, W_HASHPRICE_PV, W_BTC, W_COUNT, W_DISCOUNT, W_PRICE, W_PRICE_PV = range(7)
N_WEIGHTS = 7
# accumulator rows per (scenario, site, period) of take-or-pay resale over every step
R_RESALE, R_RESALE_PV = range(2)


def chunk_pass(*args) -> tuple[np.ndarray, ...]:
    """Run the pass (see _chunk_pass); returns the coupled points (scenario, step, site, cap kW, call)."""
    return _chunk_pass(*args)


# The masked sums: per step, each weight added where the step's key is below the threshold, as a select of the sum
# (`s + w if run else s`), which LLVM compiles to one masked vector add per weight (AVX-512 merge masking): ~0.24 ns
# per step and threshold of six weights, where the product with a 0/1 mask took ~0.36 (a multiply, then an add: the
# mask's product keeps 0 x inf = nan and -0, so LLVM may not drop it). Thresholds in pairs: their masks share the
# step's loads (four at once spill registers and are no faster). The sums may be reassociated (vectorised): the
# order of a float sum, nothing else. The loops run from a literal 0 over equal-length slices: with a variable start,
# numba's negative-index wraparound keeps LLVM from vectorising them (~8x slower, measured).
_SUMS = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"reassoc"}}


@numba.njit(**_SUMS)
def _price_sums_pair(keys, theta0, theta1, row_h, row_h_pv, row_btc, discount, spot, offset, out0, out1):
    """out0 (out1)[:] = the weights summed over the steps t with keys[t] < theta0 (theta1), for a site whose price is
    spot + offset: hashprice, discounted hashprice, BTC, the count, the price and the discounted price."""
    a_h = a_h_pv = a_btc = a_count = a_p = a_p_pv = 0.0
    b_h = b_h_pv = b_btc = b_count = b_p = b_p_pv = 0.0
    for t in range(keys.shape[0]):
        k, h, h_pv, btc = keys[t], row_h[t], row_h_pv[t], row_btc[t]
        p = spot[t] + offset
        p_pv = p * discount[t]
        run = k < theta0
        a_h = a_h + h if run else a_h
        a_h_pv = a_h_pv + h_pv if run else a_h_pv
        a_btc = a_btc + btc if run else a_btc
        a_count = a_count + 1.0 if run else a_count
        a_p = a_p + p if run else a_p
        a_p_pv = a_p_pv + p_pv if run else a_p_pv
        run = k < theta1
        b_h = b_h + h if run else b_h
        b_h_pv = b_h_pv + h_pv if run else b_h_pv
        b_btc = b_btc + btc if run else b_btc
        b_count = b_count + 1.0 if run else b_count
        b_p = b_p + p if run else b_p
        b_p_pv = b_p_pv + p_pv if run else b_p_pv
    _store(out0, a_h, a_h_pv, a_btc, a_count)
    _store(out1, b_h, b_h_pv, b_btc, b_count)
    out0[W_PRICE], out0[W_PRICE_PV], out1[W_PRICE], out1[W_PRICE_PV] = a_p, a_p_pv, b_p, b_p_pv


@numba.njit(**_SUMS)
def _fixed_sums_pair(keys, theta0, theta1, row_h, row_h_pv, row_btc, discount, out0, out1):
    """As _price_sums_pair for a site at a fixed price: the discount factor summed instead of the price's two."""
    a_h = a_h_pv = a_btc = a_count = a_d = 0.0
    b_h = b_h_pv = b_btc = b_count = b_d = 0.0
    for t in range(keys.shape[0]):
        k, h, h_pv, btc, d = keys[t], row_h[t], row_h_pv[t], row_btc[t], discount[t]
        run = k < theta0
        a_h = a_h + h if run else a_h
        a_h_pv = a_h_pv + h_pv if run else a_h_pv
        a_btc = a_btc + btc if run else a_btc
        a_count = a_count + 1.0 if run else a_count
        a_d = a_d + d if run else a_d
        run = k < theta1
        b_h = b_h + h if run else b_h
        b_h_pv = b_h_pv + h_pv if run else b_h_pv
        b_btc = b_btc + btc if run else b_btc
        b_count = b_count + 1.0 if run else b_count
        b_d = b_d + d if run else b_d
    _store(out0, a_h, a_h_pv, a_btc, a_count)
    _store(out1, b_h, b_h_pv, b_btc, b_count)
    out0[W_DISCOUNT], out1[W_DISCOUNT] = a_d, b_d


# A row that couples nowhere (no event or call step, every hashprice > 0) computes its keys inside the sums, four
# thresholds per loop: the key is divided once per step for all four (the pairs would divide twice) and the spot row
# is streamed from memory while the sums run, instead of written as keys and read back: ~10% less for the keys and
# sums of the bench's 15-minute rows (measured). The key is the same expression as _keys', so the same bits.
@numba.njit(**_SUMS)
def _price_sums_quad(thresholds, row_h, row_h_pv, row_btc, discount, spot, offset, out0, out1, out2, out3):
    """_price_sums_pair for four thresholds (ascending: thresholds[0..3]), the keys (spot + offset) / hashprice."""
    theta0, theta1, theta2, theta3 = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    a_h = a_h_pv = a_btc = a_count = a_p = a_p_pv = 0.0
    b_h = b_h_pv = b_btc = b_count = b_p = b_p_pv = 0.0
    c_h = c_h_pv = c_btc = c_count = c_p = c_p_pv = 0.0
    d_h = d_h_pv = d_btc = d_count = d_p = d_p_pv = 0.0
    for t in range(row_h.shape[0]):
        h, h_pv, btc = row_h[t], row_h_pv[t], row_btc[t]
        p = spot[t] + offset
        k = p / h
        p_pv = p * discount[t]
        run = k < theta0
        a_h, a_h_pv, a_btc = (a_h + h, a_h_pv + h_pv, a_btc + btc) if run else (a_h, a_h_pv, a_btc)
        a_count, a_p, a_p_pv = (a_count + 1.0, a_p + p, a_p_pv + p_pv) if run else (a_count, a_p, a_p_pv)
        run = k < theta1
        b_h, b_h_pv, b_btc = (b_h + h, b_h_pv + h_pv, b_btc + btc) if run else (b_h, b_h_pv, b_btc)
        b_count, b_p, b_p_pv = (b_count + 1.0, b_p + p, b_p_pv + p_pv) if run else (b_count, b_p, b_p_pv)
        run = k < theta2
        c_h, c_h_pv, c_btc = (c_h + h, c_h_pv + h_pv, c_btc + btc) if run else (c_h, c_h_pv, c_btc)
        c_count, c_p, c_p_pv = (c_count + 1.0, c_p + p, c_p_pv + p_pv) if run else (c_count, c_p, c_p_pv)
        run = k < theta3
        d_h, d_h_pv, d_btc = (d_h + h, d_h_pv + h_pv, d_btc + btc) if run else (d_h, d_h_pv, d_btc)
        d_count, d_p, d_p_pv = (d_count + 1.0, d_p + p, d_p_pv + p_pv) if run else (d_count, d_p, d_p_pv)
    _store(out0, a_h, a_h_pv, a_btc, a_count)
    _store(out1, b_h, b_h_pv, b_btc, b_count)
    _store(out2, c_h, c_h_pv, c_btc, c_count)
    _store(out3, d_h, d_h_pv, d_btc, d_count)
    out0[W_PRICE], out1[W_PRICE], out2[W_PRICE], out3[W_PRICE] = a_p, b_p, c_p, d_p
    out0[W_PRICE_PV], out1[W_PRICE_PV], out2[W_PRICE_PV], out3[W_PRICE_PV] = a_p_pv, b_p_pv, c_p_pv, d_p_pv


@numba.njit(**_SUMS)
def _fixed_sums_quad(thresholds, row_h, row_h_pv, row_btc, discount, offset, out0, out1, out2, out3):
    """_fixed_sums_pair for four thresholds, the keys offset / hashprice."""
    theta0, theta1, theta2, theta3 = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    a_h = a_h_pv = a_btc = a_count = a_d = 0.0
    b_h = b_h_pv = b_btc = b_count = b_d = 0.0
    c_h = c_h_pv = c_btc = c_count = c_d = 0.0
    d_h = d_h_pv = d_btc = d_count = d_d = 0.0
    for t in range(row_h.shape[0]):
        h, h_pv, btc, d = row_h[t], row_h_pv[t], row_btc[t], discount[t]
        k = offset / h
        run = k < theta0
        a_h, a_h_pv, a_btc = (a_h + h, a_h_pv + h_pv, a_btc + btc) if run else (a_h, a_h_pv, a_btc)
        a_count, a_d = (a_count + 1.0, a_d + d) if run else (a_count, a_d)
        run = k < theta1
        b_h, b_h_pv, b_btc = (b_h + h, b_h_pv + h_pv, b_btc + btc) if run else (b_h, b_h_pv, b_btc)
        b_count, b_d = (b_count + 1.0, b_d + d) if run else (b_count, b_d)
        run = k < theta2
        c_h, c_h_pv, c_btc = (c_h + h, c_h_pv + h_pv, c_btc + btc) if run else (c_h, c_h_pv, c_btc)
        c_count, c_d = (c_count + 1.0, c_d + d) if run else (c_count, c_d)
        run = k < theta3
        d_h, d_h_pv, d_btc = (d_h + h, d_h_pv + h_pv, d_btc + btc) if run else (d_h, d_h_pv, d_btc)
        d_count, d_d = (d_count + 1.0, d_d + d) if run else (d_count, d_d)
    _store(out0, a_h, a_h_pv, a_btc, a_count)
    _store(out1, b_h, b_h_pv, b_btc, b_count)
    _store(out2, c_h, c_h_pv, c_btc, c_count)
    _store(out3, d_h, d_h_pv, d_btc, d_count)
    out0[W_DISCOUNT], out1[W_DISCOUNT], out2[W_DISCOUNT], out3[W_DISCOUNT] = a_d, b_d, c_d, d_d


@numba.njit(cache=True, nogil=True)
def _store(out, s_h, s_h_pv, s_btc, s_count):
    out[W_HASHPRICE], out[W_HASHPRICE_PV], out[W_BTC], out[W_COUNT] = s_h, s_h_pv, s_btc, s_count


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk_pass(
    hashprice_ph_day,  # [S, T] USD per PH/s per day
    btc_price,  # [S, T]
    subsidy,  # [S, T]
    discount,  # [T]
    power,  # [M, S, T] spot USD/MWh
    fraction,  # [M, S, T] share of capacity sites may draw; ignored unless has_fraction
    calls,  # [M, S, T] bool demand-response calls; ignored unless has_calls
    has_fraction,
    has_calls,
    bounds,  # [P + 1] period bounds in steps
    step_hours,
    tail_start,  # first step of the last year (take-or-pay tail)
    site_market,  # [N] market position
    site_follows_spot,  # [N] bool: price = spot + offset, else = offset
    site_offset,  # [N] USD/MWh
    site_resale_fee,  # [N] USD/MWh
    site_resells,  # [N] bool: take-or-pay with resale
    site_n_thresholds,  # [N]
    site_thresholds,  # [N, U] ascending, padded
    site_suffix_load_kw,  # [N, U + 1] load of every profile of thresholds >= j running; [.., U_n] = 0
    site_suffix_members,  # [N, U + 1] int: the site's profiles of thresholds >= j (candidates of a coupled step)
    site_capacity_mw,  # [N]
    site_has_dr,  # [N] bool
    site_ai_kw,  # [N] the largest AI load at the meter
    site_ai_step,  # [N] the first step a hall could be live
    sums,  # out [S, N, U, P, N_WEIGHTS] per threshold, zeroed
    runs,  # out [S, N, U] run steps per threshold (coupled ones too), zeroed
    resale,  # out [S, N, P, 2], zeroed
    resale_tail,  # out [S, N], zeroed
    hashprice_sum,  # out [S], zeroed
    halving,  # out [S] first step with a lower subsidy than the first's; n_steps if none
    item_count,  # out [S] int: candidate racks of the scenario's coupled steps, zeroed
):
    """Returns the coupled points (scenario, step, site, cap kW, call), in (scenario, site, step) order."""
    n_scen, n_steps = hashprice_ph_day.shape
    n_sites, n_periods = site_market.shape[0], bounds.shape[0] - 1
    row_h, row_h_pv, row_btc, keys = np.empty(n_steps), np.empty(n_steps), np.empty(n_steps), np.empty(n_steps)
    points = (
        np.empty(n_steps, np.int64),
        np.empty(n_steps, np.int64),
        np.empty(n_steps, np.int64),
        np.empty(n_steps),
        np.empty(n_steps, np.bool_),
    )
    n_coupled = 0
    for s in range(n_scen):
        # the shared weights of the scenario's steps, once for every site
        hp_day, btc = hashprice_ph_day[s], btc_price[s]
        for t in range(n_steps):
            h = hp_day[t] / TH_PER_PH / HOURS_PER_DAY  # per TH-hour, as ScenarioSet.hashprice_usd_per_th_hour
            row_h[t] = h
            row_h_pv[t] = h * discount[t]
            row_btc[t] = h * step_hours / btc[t]
        hashprice_sum[s], n_positive = _sum_and_positives(hp_day)
        positive = n_positive == n_steps
        halving[s] = _first_lower(subsidy[s])
        for n in range(n_sites):
            m, n_u, follows = site_market[n], site_n_thresholds[n], site_follows_spot[n]
            spot = power[m, s]
            site_calls = has_calls and site_has_dr[n]
            flagged = 0
            if has_fraction:
                row_fraction = fraction[m, s]
                for t in range(n_steps):
                    flagged += row_fraction[t] < 1.0
            if site_calls:
                row_calls = calls[m, s]
                for t in range(n_steps):
                    flagged += row_calls[t]
            # a row without an event or a call step couples nowhere: its keys are computed inside the sums (no row of
            # keys written and read back); one with a zero hashprice takes the stored keys too (their inf rule)
            stored_keys = flagged > 0 or not positive
            if stored_keys:
                _keys(spot, site_offset[n], follows, row_h, positive, keys)
            if flagged:
                points, n_coupled = _find_coupled(
                    s,
                    n,
                    fraction[m, s] if has_fraction else fraction[0, 0],
                    calls[m, s] if site_calls else calls[0, 0],
                    has_fraction,
                    site_calls,
                    keys,
                    n_u,
                    site_thresholds[n],
                    site_suffix_load_kw[n],
                    site_suffix_members[n],
                    site_capacity_mw[n],
                    site_ai_kw[n],
                    site_ai_step[n],
                    runs[s, n],
                    item_count,
                    points,
                    n_coupled,
                )
            for p in range(n_periods):
                a, b = bounds[p], bounds[p + 1]
                if stored_keys:
                    _site_sums(
                        keys[a:b],
                        site_thresholds[n],
                        n_u,
                        follows,
                        site_offset[n],
                        row_h[a:b],
                        row_h_pv[a:b],
                        row_btc[a:b],
                        discount[a:b],
                        spot[a:b],
                        sums[s, n, :, p],
                        runs[s, n],
                    )
                else:
                    _site_sums_inline(
                        site_thresholds[n],
                        n_u,
                        follows,
                        site_offset[n],
                        row_h[a:b],
                        row_h_pv[a:b],
                        row_btc[a:b],
                        discount[a:b],
                        spot[a:b],
                        sums[s, n, :, p],
                        runs[s, n],
                    )
                if site_resells[n]:
                    resale[s, n, p, R_RESALE], resale[s, n, p, R_RESALE_PV] = _resale_sums(
                        spot[a:b], discount[a:b], site_resale_fee[n]
                    )
            if site_resells[n]:
                resale_tail[s, n] = _resale_sums(spot[tail_start:], discount[tail_start:], site_resale_fee[n])[0]
    return _trimmed(points, n_coupled)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _site_sums(keys, thresholds, n_u, follows, offset, row_h, row_h_pv, row_btc, discount, spot, out, runs):
    """A site's weight sums per threshold over a period's steps (out [U, N_WEIGHTS]), thresholds in pairs (an odd
    last one paired with itself: its second sums are dropped), the price's where it follows spot; their run steps
    added to runs [U]."""
    for u in range(0, n_u, 2):
        v = min(u + 1, n_u - 1)
        if follows:
            _price_sums_pair(
                keys, thresholds[u], thresholds[v], row_h, row_h_pv, row_btc, discount, spot, offset, out[u], out[v]
            )
        else:
            _fixed_sums_pair(keys, thresholds[u], thresholds[v], row_h, row_h_pv, row_btc, discount, out[u], out[v])
    for u in range(n_u):
        runs[u] += out[u, W_COUNT]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _site_sums_inline(thresholds, n_u, follows, offset, row_h, row_h_pv, row_btc, discount, spot, out, runs):
    """_site_sums with the keys computed inside the sums, thresholds four at a time (the last group's missing ones
    repeat its last threshold: their sums are the same and written to the same row)."""
    for u in range(0, n_u, 4):
        last = n_u - 1
        group = thresholds[u : u + 4] if u + 4 <= n_u else _repeat_last(thresholds[u:n_u])
        o0, o1, o2, o3 = out[u], out[min(u + 1, last)], out[min(u + 2, last)], out[min(u + 3, last)]
        if follows:
            _price_sums_quad(group, row_h, row_h_pv, row_btc, discount, spot, offset, o0, o1, o2, o3)
        else:
            _fixed_sums_quad(group, row_h, row_h_pv, row_btc, discount, offset, o0, o1, o2, o3)
    for u in range(n_u):
        runs[u] += out[u, W_COUNT]


@numba.njit(cache=True, nogil=True)
def _repeat_last(values):
    """Four values: `values` (one to three) followed by its last repeated."""
    out = np.empty(4)
    for i in range(4):
        out[i] = values[min(i, values.shape[0] - 1)]
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _first_lower(subsidy):
    """The first step with a lower subsidy than the first's (the halving); the step count if none. A branch-free
    count per block of _SCAN_BLOCK steps, the steps themselves only in the block with the first lower one: a scalar
    loop with an exit test per step over a row without a halving (every row of a horizon shorter than the time to
    the next) took ~1 ns per step, ~2 ms of the first bench row."""
    n_steps, first = subsidy.shape[0], subsidy[0]
    for a in range(0, n_steps, _SCAN_BLOCK):
        block = subsidy[a : min(a + _SCAN_BLOCK, n_steps)]
        lower = 0
        for t in range(block.shape[0]):
            lower += block[t] < first
        if lower:
            for t in range(block.shape[0]):
                if block[t] < first:
                    return a + t
    return n_steps


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _sum_and_positives(values):
    """(the sum of the values, how many are > 0): a vectorised reduction."""
    total, positives = 0.0, 0
    for t in range(values.shape[0]):
        total += values[t]
        positives += values[t] > 0
    return total, positives


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _resale_sums(spot, discount, fee):
    """(resale, discounted resale) summed over the steps: spot - fee per MWh sold back (take-or-pay)."""
    total, total_pv = 0.0, 0.0
    for t in range(spot.shape[0]):
        sold = spot[t] - fee
        total += sold
        total_pv += sold * discount[t]
    return total, total_pv


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _keys(spot, offset, follows_spot, row_h, positive, keys):
    """keys[:] = price / hashprice per TH-hour, as optimizer.economics.price_keys (a zero hashprice runs nothing
    unless power is paid to be taken); `positive`: every hashprice is > 0, a plain division."""
    if follows_spot:
        for t in range(keys.shape[0]):
            keys[t] = (spot[t] + offset) / row_h[t]
    else:
        for t in range(keys.shape[0]):
            keys[t] = offset / row_h[t]
    if not positive:
        for t in range(keys.shape[0]):
            if not row_h[t] > 0:
                price = spot[t] + offset if follows_spot else offset
                keys[t] = -np.inf if price < 0 else np.inf


@numba.njit(cache=True, nogil=True)
def _reserved(points, n, more):
    """The coupled points' arrays (scenario, step, site, cap kW, call), doubled if `more` would not fit after n:
    their count is known only after the pass (counting the event and call steps beforehand was a numpy pass over
    every fraction and call array, ~4 ms of the first bench row)."""
    if n + more <= points[0].shape[0]:
        return points
    size = max(2 * points[0].shape[0], n + more)
    return (
        _grown(points[0], n, size),
        _grown(points[1], n, size),
        _grown(points[2], n, size),
        _grown(points[3], n, size),
        _grown(points[4], n, size),
    )


@numba.njit(cache=True, nogil=True)
def _trimmed(points, n):
    """The first n coupled points."""
    return points[0][:n], points[1][:n], points[2][:n], points[3][:n], points[4][:n]


@numba.njit(cache=True, nogil=True)
def _grown(values, n, size):
    out = np.empty(size, values.dtype)
    out[:n] = values[:n]
    return out


# steps scanned at once for an event or a call: a branch-free count per block, the point checks only in blocks
# with one (events and calls cover a few percent of the steps, in runs)
_SCAN_BLOCK = 64


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _find_coupled(
    s,
    n,
    fraction,  # [T] of the site's market in scenario s
    calls,  # [T] bool
    has_fraction,
    has_calls,
    keys,  # [T], the site's
    n_u,
    thresholds,  # [U]
    suffix_load_kw,  # [U + 1]
    suffix_members,  # [U + 1]
    capacity_mw,
    ai_kw,
    ai_step,
    runs,  # [U] of (s, n)
    item_count,  # [S]
    points,  # (scenario, step, site, cap kW, call) arrays, the first n_coupled written
    n_coupled,
):
    """The site's coupled steps of scenario s: appended to `points` (returned with the new count), counted as run
    steps and their candidate racks in item_count[s], their keys set to +inf so the sums leave them out."""
    n_steps = keys.shape[0]
    for a in range(0, n_steps, _SCAN_BLOCK):
        b = min(a + _SCAN_BLOCK, n_steps)
        if _flagged(fraction[a:b], calls[a:b] if has_calls else calls, has_fraction, has_calls) == 0:
            continue
        points = _reserved(points, n_coupled, b - a)
        for t in range(a, b):
            frac = fraction[t] if has_fraction else 1.0
            call = has_calls and calls[t]
            if not (frac < 1.0 or call):
                continue
            j = 0  # the thresholds u >= j run
            while j < n_u and thresholds[j] <= keys[t]:
                j += 1
            running_kw = suffix_load_kw[j]
            cap_kw = frac * capacity_mw * KW_PER_MW if frac < 1.0 else np.inf
            live_ai_kw = ai_kw if t >= ai_step else 0.0
            if running_kw + live_ai_kw > cap_kw or (call and running_kw > 0):
                points[0][n_coupled], points[1][n_coupled], points[2][n_coupled] = s, t, n
                points[3][n_coupled], points[4][n_coupled] = cap_kw, call
                n_coupled += 1
                item_count[s] += suffix_members[j]
                for u in range(j, n_u):
                    runs[u] += 1
                keys[t] = np.inf
    return points, n_coupled


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _flagged(fraction, calls, has_fraction, has_calls):
    """How many steps are in an event or a call (a branch-free count; the loops start at a literal 0 over the
    slices, see _SUMS)."""
    count = 0
    if has_fraction:
        for t in range(fraction.shape[0]):
            count += fraction[t] < 1.0
    if has_calls:
        for t in range(calls.shape[0]):
            count += calls[t]
    return count


def coupled_tables(*args) -> None:
    """Write the coupled slots and their candidate racks (see _coupled_tables)."""
    _coupled_tables(*args)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _coupled_tables(
    point_scen,  # [C] coupled points in (scenario, site, step) order, from _chunk_pass
    point_step,  # [C]
    point_site,  # [C]
    point_cap_kw,  # [C]
    point_call,  # [C] bool
    hashprice_ph_day,  # [S, T]
    btc_price,  # [S, T]
    power,  # [M, S, T]
    discount,  # [T]
    site_market,  # [N]
    site_follows_spot,  # [N] bool
    site_offset,  # [N]
    site_resells,  # [N] bool
    site_resale_fee,  # [N]
    site_first_member,  # [N + 1] the site's profiles are members[first[n]:first[n + 1]], ascending
    members,  # [Q]
    theta,  # [Q] run threshold per profile
    hashrate_ths,  # [Q] per rack
    mwh_per_step,  # [Q] MWh one rack draws in a step (meter kW / 1000 x step hours)
    fee_factor,  # 1 - pool fee
    step_hours,
    count,  # [S] int: the items of each scenario (_chunk_pass's item_count)
    slot_site,  # out [S, K] int32, uninitialised (as the other outputs)
    slot_step,  # out [S, K] int32
    slot_cap_kw,  # out [S, K]
    slot_call,  # out [S, K] bool
    slot_resale,  # out [S, K] take-or-pay: spot - fee; else 0
    slot_discount,  # out [S, K]
    slot_btc_price,  # out [S, K]
    item_slot,  # out [S, I + 1] int32: one spare column (the caller hands out [:, :I])
    item_group,  # out [S, I + 1] int32
    item_revenue,  # out [S, I + 1]
    item_cost,  # out [S, I + 1]
    *padding,  # the fill past a scenario's slots and items, one per output in their order
):
    """Each point's slot (its rank among its scenario's points) and every profile of its site with a positive margin
    there (key < theta), in (scenario, slot, profile) order: hash revenue and power cost of one rack running through
    the step, with the operations of the numpy path's _coupled_slots and _numpy_items in their order, so the same
    bits. Each scenario's row padded past its slots and items: one write per cell, the outputs need no fill before.
    The item count per scenario comes from the pass that found the points, so the points are walked once."""
    n_scen = count.shape[0]
    slots, filled = np.zeros(n_scen, np.int64), np.zeros(n_scen, np.int64)
    for c in range(point_scen.shape[0]):
        s, t, n = point_scen[c], point_step[c], point_site[c]
        j = slots[s]
        spot = power[site_market[n], s, t]
        slot_site[s, j], slot_step[s, j], slot_cap_kw[s, j], slot_call[s, j] = n, t, point_cap_kw[c], point_call[c]
        slot_resale[s, j] = spot - site_resale_fee[n] if site_resells[n] else 0.0
        slot_discount[s, j], slot_btc_price[s, j] = discount[t], btc_price[s, t]
        slots[s] = j + 1
        h = hashprice_ph_day[s, t] / TH_PER_PH / HOURS_PER_DAY
        price = spot + site_offset[n] if site_follows_spot[n] else site_offset[n]
        if h > 0:
            key = price / h
        elif price < 0:
            key = -np.inf
        else:
            key = np.inf
        k = filled[s]
        for i in range(site_first_member[n], site_first_member[n + 1]):
            # branch-free: every candidate is written at k, which moves on only if it runs (a branch on key < theta
            # mispredicts about as often as not); the spare column takes the last write of a full row
            q = members[i]
            item_slot[s, k] = j
            item_group[s, k] = q
            item_revenue[s, k] = hashrate_ths[q] * h * fee_factor * step_hours
            item_cost[s, k] = mwh_per_step[q] * price
            k += key < theta[q]
        filled[s] = k
    for s in range(n_scen):
        if filled[s] != count[s]:
            raise ValueError("coupled items: the pass's count per scenario and the items written differ")
    slot_fields = (slot_site, slot_step, slot_cap_kw, slot_call, slot_resale, slot_discount, slot_btc_price)
    _pad(slots, slot_fields[0], padding[0])
    _pad(slots, slot_fields[1], padding[1])
    _pad(slots, slot_fields[2], padding[2])
    _pad(slots, slot_fields[3], padding[3])
    _pad(slots, slot_fields[4], padding[4])
    _pad(slots, slot_fields[5], padding[5])
    _pad(slots, slot_fields[6], padding[6])
    _pad(count, item_slot, padding[7])
    _pad(count, item_group, padding[8])
    _pad(count, item_revenue, padding[9])
    _pad(count, item_cost, padding[10])


@numba.njit(cache=True, nogil=True)
def _pad(filled, table, value):
    """The table's row s past filled[s] set to the padding value."""
    for s in range(filled.shape[0]):
        table[s, filled[s] :] = value


def profile_outputs(*args) -> None:
    """Write every profile's [Q, P, S] sums and run steps (see _profile_outputs)."""
    _profile_outputs(*args)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _profile_outputs(
    sums,  # [S, N, U, P, N_WEIGHTS] per threshold, from _chunk_pass
    runs,  # [S, N, U]
    profile_site,  # [Q] int
    profile_threshold,  # [Q] int, the position of the profile's threshold among its site's
    rev_scale,  # [Q] TH/s after pool fee: per TH-hour of hashprice
    mwh_scale,  # [Q] MWh one rack draws in a step
    opex_pv,  # [Q, P] discounted opex per rack
    site_offset,  # [N] USD/MWh
    site_follows_spot,  # [N] bool
    step_hours,
    n_steps,
    mine_value,  # out [Q, P, S]
    revenue,  # out [Q, P, S]
    cost,  # out [Q, P, S]
    revenue_pv,  # out [Q, P, S]
    cost_pv,  # out [Q, P, S]
    energy,  # out [Q, P, S]
    btc,  # out [Q, P, S]
    run_fraction,  # out [Q, S]
):
    """Each profile's sums are its threshold's times its per-rack scale, written straight into the outputs: one
    write per value, with the operations of the numpy path's _threshold_sums and _profile_sums in their order
    (the cost is the offset times the steps plus, where the price follows spot, the spot sums), instead of
    transposes, a concatenation, a gather and a scaling pass per field."""
    rows = _threshold_rows(sums, runs, site_offset, site_follows_spot, step_hours, n_steps)
    n_q, n_p = profile_site.shape[0], sums.shape[3]
    for q in range(n_q):
        n, u = profile_site[q], profile_threshold[q]
        rs, ms = rev_scale[q], mwh_scale[q]
        for p in range(n_p):
            row, opex = rows[n, u, p], opex_pv[q, p]
            for s in range(row.shape[1]):  # contiguous rows in, contiguous rows out: a vectorised loop
                r_pv = row[_ROW_REVENUE_PV, s] * rs
                cost_pv_q = row[_ROW_COST_PV, s] * ms
                revenue[q, p, s] = row[_ROW_REVENUE, s] * rs
                revenue_pv[q, p, s] = r_pv
                btc[q, p, s] = row[_ROW_BTC, s] * rs
                cost[q, p, s] = row[_ROW_COST, s] * ms
                cost_pv[q, p, s] = cost_pv_q
                energy[q, p, s] = row[_ROW_COUNT, s] * ms
                mine_value[q, p, s] = r_pv - cost_pv_q - opex
        run_fraction[q, :] = rows[n, u, 0, _ROW_RUN_FRACTION]


# rows per (site, threshold, period) of _threshold_rows, scenarios last: what every profile of the threshold scales
_ROW_REVENUE, _ROW_REVENUE_PV, _ROW_BTC, _ROW_COST, _ROW_COST_PV, _ROW_COUNT, _ROW_RUN_FRACTION = range(7)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _threshold_rows(sums, runs, site_offset, site_follows_spot, step_hours, n_steps):
    """[N, U, P, 7, S]: per threshold and period, its sums before a profile's per-rack scale, scenarios contiguous
    (the sums are [S, ...]: read in place, a profile's loop over scenarios would stride). The operations are the
    numpy path's, in its order: hashprice sums times the step hours, the cost the offset times the steps plus,
    where the price follows spot, the spot sums."""
    n_scen, n_sites, n_u, n_p = sums.shape[0], sums.shape[1], sums.shape[2], sums.shape[3]
    rows = np.empty((n_sites, n_u, n_p, 7, n_scen))
    for n in range(n_sites):
        offset, follows = site_offset[n], site_follows_spot[n]
        for u in range(n_u):
            for p in range(n_p):
                for s in range(n_scen):
                    w = sums[s, n, u, p]
                    rows[n, u, p, _ROW_REVENUE, s] = w[W_HASHPRICE] * step_hours
                    rows[n, u, p, _ROW_REVENUE_PV, s] = w[W_HASHPRICE_PV] * step_hours
                    rows[n, u, p, _ROW_BTC, s] = w[W_BTC]
                    rows[n, u, p, _ROW_COST, s] = w[W_PRICE] if follows else offset * w[W_COUNT]
                    rows[n, u, p, _ROW_COST_PV, s] = w[W_PRICE_PV] if follows else offset * w[W_DISCOUNT]
                    rows[n, u, p, _ROW_COUNT, s] = w[W_COUNT]
                    rows[n, u, p, _ROW_RUN_FRACTION, s] = runs[s, n, u] / n_steps
    return rows
