"""The economics of a chunk of scenarios in one compiled pass over its arrays (numba), for large runs.

optimizer.economics prices a chunk with numpy: per site, one run mask per distinct threshold and a
matrix product per period, a dozen passes over [S, T] arrays per site. Here every scenario-step is read
once: its hashprice, BTC price, subsidy, each market's spot price, curtailment fraction and call, and
for every site the step's key (price / hashprice per TH-hour) is placed in its *bucket*: the number j
of the site's ascending thresholds at or below the key, so the thresholds u >= j run (key < theta_u).
The step's weights are added to that bucket's accumulators; after the pass, a threshold's sums are its
bucket's plus every lower bucket's (a prefix sum over at most U buckets). That is O(S T (N + W)) work
for N sites and W weights, nothing of size profiles x steps, and no temporaries of size [S, T].

The same pass finds the coupled steps (an event's cap or a demand-response call can bind: the load of
every profile that runs at the key, plus the largest AI load once a hall could be live, exceeds what the
site may draw) and leaves them out of the sums; it sums the take-or-pay resale (spot - fee) of every
step, per period and over the last year; the hashprice per scenario; and finds the halving step.

Compiled once per machine: numba caches the machine code next to this file (`cache=True`), so a later
process loads it in milliseconds; the import of numba itself (~0.5 s) is why small runs stay on numpy
(optimizer.economics.KERNEL_MIN_SITE_CELLS).
"""

from __future__ import annotations

import numpy as np

from optimizer.constants import HOURS_PER_DAY, KW_PER_MW, TH_PER_PH

# accumulator rows per (scenario, site, bucket, period): what a running step adds
W_HASHPRICE, W_HASHPRICE_PV, W_BTC, W_COUNT, W_DISCOUNT, W_SPOT, W_SPOT_PV = range(7)
N_WEIGHTS = 7
# accumulator rows per (scenario, site, period) of take-or-pay resale over every step
R_RESALE, R_RESALE_PV = range(2)

_compiled = None


def _kernel():
    """The compiled pass, built (or loaded from numba's cache) on first use."""
    global _compiled
    if _compiled is None:
        import numba

        _compiled = numba.njit(cache=True, nogil=True)(_chunk_pass)
    return _compiled


def chunk_pass(*args) -> int:
    """Run the pass (see _chunk_pass); returns the number of coupled points written."""
    return _kernel()(*args)


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
    site_capacity_mw,  # [N]
    site_has_dr,  # [N] bool
    site_ai_kw,  # [N] the largest AI load at the meter
    site_ai_step,  # [N] the first step a hall could be live
    sums,  # out [S, N, U, P, N_WEIGHTS], zeroed
    runs,  # out [S, N, U] run steps per bucket (coupled ones too), zeroed
    resale,  # out [S, N, P, 2], zeroed
    resale_tail,  # out [S, N], zeroed
    hashprice_sum,  # out [S], zeroed
    halving,  # out [S] first step with a lower subsidy than the first's; n_steps if none
    coupled_scen,  # out [C] int
    coupled_step,  # out [C] int
    coupled_site,  # out [C] int
    coupled_cap_kw,  # out [C]
    coupled_call,  # out [C] bool
):
    n_scen, n_steps = hashprice_ph_day.shape
    n_sites, n_periods = site_market.shape[0], bounds.shape[0] - 1
    n_u_max = site_thresholds.shape[1]
    row_h, row_h_pv, row_btc = np.empty(n_steps), np.empty(n_steps), np.empty(n_steps)
    acc = np.empty((n_u_max + 1, N_WEIGHTS))  # per bucket; bucket U_n: no profile runs (summed, then dropped)
    n_coupled = 0
    for s in range(n_scen):
        # the shared weights of the scenario's steps, once for every site
        first_subsidy, halving_step, hashprice_total = subsidy[s, 0], n_steps, 0.0
        for t in range(n_steps):
            hp_day = hashprice_ph_day[s, t]
            hashprice_total += hp_day
            if halving_step == n_steps and subsidy[s, t] < first_subsidy:
                halving_step = t
            h = hp_day / TH_PER_PH / HOURS_PER_DAY  # per TH-hour, as ScenarioSet.hashprice_usd_per_th_hour
            row_h[t] = h
            row_h_pv[t] = h * discount[t]
            row_btc[t] = h * step_hours / btc_price[s, t]
        halving[s] = halving_step
        hashprice_sum[s] = hashprice_total
        for n in range(n_sites):
            m, n_u, offset, follows = site_market[n], site_n_thresholds[n], site_offset[n], site_follows_spot[n]
            events = has_fraction or (has_calls and site_has_dr[n])
            for p in range(n_periods):
                acc[:, :] = 0.0
                for t in range(bounds[p], bounds[p + 1]):
                    spot = power[m, s, t]
                    price = spot + offset if follows else offset
                    h = row_h[t]
                    if h > 0:
                        key = price / h
                    elif price < 0:
                        key = -np.inf
                    else:
                        key = np.inf
                    j = 0
                    for u in range(n_u):  # branch-free: the number of thresholds at or below the key
                        j += site_thresholds[n, u] <= key
                    if events:
                        frac = fraction[m, s, t] if has_fraction else 1.0
                        call = has_calls and site_has_dr[n] and calls[m, s, t]
                        if frac < 1.0 or call:
                            running_kw = site_suffix_load_kw[n, j]
                            cap_kw = frac * site_capacity_mw[n] * KW_PER_MW if frac < 1.0 else np.inf
                            ai_kw = site_ai_kw[n] if t >= site_ai_step[n] else 0.0
                            if running_kw + ai_kw > cap_kw or (call and running_kw > 0):
                                coupled_scen[n_coupled] = s
                                coupled_step[n_coupled] = t
                                coupled_site[n_coupled] = n
                                coupled_cap_kw[n_coupled] = cap_kw
                                coupled_call[n_coupled] = call
                                n_coupled += 1
                                if j < n_u:
                                    runs[s, n, j] += 1  # a run step of the price rule, kept out of the sums
                                continue
                    d = discount[t]
                    acc[j, W_HASHPRICE] += h
                    acc[j, W_HASHPRICE_PV] += row_h_pv[t]
                    acc[j, W_BTC] += row_btc[t]
                    acc[j, W_COUNT] += 1.0
                    acc[j, W_DISCOUNT] += d
                    acc[j, W_SPOT] += spot
                    acc[j, W_SPOT_PV] += spot * d
                for j in range(n_u):
                    runs[s, n, j] += acc[j, W_COUNT]
                    for w in range(N_WEIGHTS):
                        sums[s, n, j, p, w] = acc[j, w]
                if site_resells[n]:
                    fee, total, total_pv = site_resale_fee[n], 0.0, 0.0
                    for t in range(bounds[p], bounds[p + 1]):
                        sold = power[m, s, t] - fee
                        total += sold
                        total_pv += sold * discount[t]
                        if t >= tail_start:
                            resale_tail[s, n] += sold
                    resale[s, n, p, R_RESALE] = total
                    resale[s, n, p, R_RESALE_PV] = total_pv
    return n_coupled


_compiled_items = None


def coupled_items(*args) -> None:
    """Count or write the candidate racks of the coupled slots (see _coupled_items)."""
    global _compiled_items
    if _compiled_items is None:
        import numba

        _compiled_items = numba.njit(cache=True, nogil=True)(_coupled_items)
    _compiled_items(*args)


def _coupled_items(
    point_scen,  # [C] coupled points in (scenario, site, step) order
    point_step,  # [C]
    point_site,  # [C]
    point_slot,  # [C] the point's slot in its scenario's column
    hashprice_ph_day,  # [S, T]
    power,  # [M, S, T]
    site_market,  # [N]
    site_follows_spot,  # [N] bool
    site_offset,  # [N]
    site_first_member,  # [N + 1] the site's profiles are members[first[n]:first[n + 1]], ascending
    members,  # [Q]
    theta,  # [Q] run threshold per profile
    hashrate_ths,  # [Q] per rack
    meter_kw,  # [Q] per rack
    fee_factor,  # 1 - pool fee
    step_hours,
    fill,  # False: count the items per scenario into `count`; True: write them ([S, I] outputs)
    count,  # [S] int
    item_slot,  # out [S, I] int32
    item_group,  # out [S, I] int32
    item_revenue,  # out [S, I]
    item_cost,  # out [S, I]
):
    """Every profile of the point's site with a positive margin there (key < theta), in (scenario, slot, profile)
    order: hash revenue and power cost of one rack running through the step, as optimizer.economics computes them."""
    count[:] = 0
    for c in range(point_scen.shape[0]):
        s, t, n = point_scen[c], point_step[c], point_site[c]
        h = hashprice_ph_day[s, t] / TH_PER_PH / HOURS_PER_DAY
        price = power[site_market[n], s, t] + site_offset[n] if site_follows_spot[n] else site_offset[n]
        if h > 0:
            key = price / h
        elif price < 0:
            key = -np.inf
        else:
            key = np.inf
        for i in range(site_first_member[n], site_first_member[n + 1]):
            q = members[i]
            if not key < theta[q]:
                continue
            if fill:
                k = count[s]
                item_slot[s, k] = point_slot[c]
                item_group[s, k] = q
                item_revenue[s, k] = hashrate_ths[q] * h * fee_factor * step_hours
                item_cost[s, k] = meter_kw[q] / KW_PER_MW * step_hours * price
            count[s] += 1
