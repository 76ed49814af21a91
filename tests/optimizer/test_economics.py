import numpy as np
import pytest

from optimizer.economics import breakeven_power_price_usd_per_mwh, concat_economics, group_economics
from optimizer.fleet import parse_fleet
from tests.fleets import hand_scenarios, small_fleet_data


def test_rack_value_by_hand():
    fleet = parse_fleet(small_fleet_data(days=1))
    hashprice = np.full((1, 24), 36.0)
    spot = np.full((1, 24), 30.0)
    spot[0, :4] = 500.0  # four spike hours: the spot site curtails, the fixed-price site does not see them
    econ = group_economics(fleet, hand_scenarios(hashprice, spot))

    # s-new: 10 x 200 TH/s = 2,000 TH/s; 36 $/PH/day -> 0.0015 $/TH/h; pool fee 2% -> 2.94 $/h.
    # Power: 10 x 3.5 kW x PUE 1.05 = 36.75 kW; at 30 + 2 = 32 $/MWh -> 1.176 $/h; runs 20 of 24 hours.
    revenue_per_hour = 2000 * 36 / 1000 / 24 * 0.98
    cost_per_hour = 36.75 * 32 / 1000
    assert econ.hash_revenue_usd[2, 0] == pytest.approx(20 * revenue_per_hour)
    assert econ.power_cost_usd[2, 0] == pytest.approx(20 * cost_per_hour)
    assert econ.run_fraction[2, 0] == pytest.approx(20 / 24)
    assert econ.mine_value_usd[2, 0] == pytest.approx(20 * (revenue_per_hour - cost_per_hour) - 4.0)
    assert econ.energy_mwh[2, 0] == pytest.approx(20 * 36.75 / 1000)

    # f-old at the fixed 44 $/MWh site: 1,040 TH/s earns 1.5288 $/h, draws 31.96 kW -> 1.40624 $/h: runs all day.
    old_revenue = 1040 * 36 / 1000 / 24 * 0.98
    old_cost = 10 * 104 * 29.5 / 1000 * 1.05 * 44 / 1000
    assert econ.mine_value_usd[0, 0] == pytest.approx(24 * (old_revenue - old_cost) - 3.0)


def test_loss_making_rack_never_runs():
    fleet = parse_fleet(small_fleet_data(days=1))
    econ = group_economics(fleet, hand_scenarios(np.full((1, 24), 20.0), np.full((1, 24), 30.0)))
    # At 20 $/PH/day the old machines at 44 $/MWh lose money every hour: value is minus opex only.
    assert econ.run_fraction[0, 0] == 0.0
    assert econ.mine_value_usd[0, 0] == pytest.approx(-3.0)


def test_batches_rejoin_in_index_order():
    fleet = parse_fleet(small_fleet_data(days=1))
    hashprice = np.linspace(30, 40, 3 * 24).reshape(3, 24)
    spot = np.full((3, 24), 35.0)
    whole = group_economics(fleet, hand_scenarios(hashprice, spot))
    late = group_economics(fleet, hand_scenarios(hashprice[2:], spot[2:], indices=[2]))
    early = group_economics(fleet, hand_scenarios(hashprice[:2], spot[:2], indices=[0, 1]))
    joined = concat_economics([late, early])
    np.testing.assert_array_equal(joined.indices, [0, 1, 2])
    np.testing.assert_allclose(joined.mine_value_usd, whole.mine_value_usd)


def test_batches_in_order_join_without_reordering_and_one_part_is_kept():
    """Streamed chunks arrive in index order: joined as they are (no second copy), equal to the whole; a single part
    in order is returned itself."""
    fleet = parse_fleet(small_fleet_data(days=1))
    hashprice = np.linspace(30, 40, 3 * 24).reshape(3, 24)
    spot = np.linspace(20, 60, 3 * 24).reshape(3, 24)
    whole = group_economics(fleet, hand_scenarios(hashprice, spot))
    early = group_economics(fleet, hand_scenarios(hashprice[:2], spot[:2], indices=[0, 1]))
    late = group_economics(fleet, hand_scenarios(hashprice[2:], spot[2:], indices=[2]))
    joined = concat_economics([early, late])
    np.testing.assert_array_equal(joined.indices, [0, 1, 2])
    np.testing.assert_allclose(joined.mine_value_usd, whole.mine_value_usd)
    np.testing.assert_allclose(joined.power_cost_usd, whole.power_cost_usd)
    assert concat_economics([early]) is early
    reversed_pair = group_economics(fleet, hand_scenarios(hashprice[:2][::-1], spot[:2][::-1], indices=[1, 0]))
    np.testing.assert_allclose(concat_economics([reversed_pair]).mine_value_usd, early.mine_value_usd)


def test_breakeven_by_hand():
    # S21 at 17.5 J/TH, hashprice 35 $/PH/day: 35/1000/24 $/TH-h over 17.5e-6 MWh/TH-h = 83.33 $/MWh.
    assert breakeven_power_price_usd_per_mwh(35.0, 17.5) == pytest.approx(35 / 1000 / 24 / 17.5e-6)
    assert breakeven_power_price_usd_per_mwh(35.0, 17.5) == pytest.approx(83.333, rel=1e-4)
    # PUE and pool fee lower it proportionally.
    assert breakeven_power_price_usd_per_mwh(35.0, 17.5, pue=1.25, pool_fee_fraction=0.02) == pytest.approx(
        83.333 * 0.98 / 1.25, rel=1e-4
    )


def _economics_fields():
    import dataclasses

    from optimizer.economics import GroupEconomics

    return [f.name for f in dataclasses.fields(GroupEconomics)]


@pytest.mark.parametrize("seed", range(6))
def test_kernel_equals_the_numpy_economics_field_by_field(seed):
    """The compiled one-pass kernel against the numpy path on random fleets (every contract type, events, calls,
    15-minute to 3-hour steps), with some hashprices at zero and some power prices negative: the same coupled
    slots and items exactly, every sum to the cent (only the order of float additions differs)."""
    import dataclasses

    from optimizer.fleet import parse_fleet
    from tests.fleets import random_fleet_data, scenarios_for

    fleet = parse_fleet(random_fleet_data(seed, scenarios=4))
    scenarios = scenarios_for(fleet)
    rng = np.random.default_rng(seed)
    hashprice = scenarios.hashprice_usd_per_ph_day.copy()
    hashprice[rng.random(hashprice.shape) < 0.02] = 0.0  # nothing runs there unless power is paid to be taken
    power = scenarios.power_price_usd_per_mwh.copy()
    power[rng.random(power.shape) < 0.02] *= -1.0
    scenarios = dataclasses.replace(scenarios, hashprice_usd_per_ph_day=hashprice, power_price_usd_per_mwh=power)
    numpy_path = group_economics(fleet, scenarios, kernel=False)
    kernel = group_economics(fleet, scenarios, kernel=True)
    for name in _economics_fields():
        expected, got = getattr(numpy_path, name), getattr(kernel, name)
        assert got.shape == expected.shape, name
        if name.startswith(("coupled_", "item_")) or got.dtype.kind in "ib" or name == "run_fraction":
            np.testing.assert_array_equal(got, expected, err_msg=name)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0.005, err_msg=name)
    assert (hashprice == 0).any() and (power < 0).any()
    assert numpy_path.n_coupled > 0 or not fleet.markets[0].curtailment_events


def test_kernel_equals_numpy_when_most_steps_couple():
    """An event over every step at a tenth of capacity: far more coupled points than a scenario row has steps, so
    the kernel's point arrays grow during the pass; the same slots, items and sums as the numpy path."""
    import dataclasses

    from tests.fleets import random_fleet_data, scenarios_for

    fleet = parse_fleet(random_fleet_data(1, scenarios=3))
    scenarios = scenarios_for(fleet)
    shape = scenarios.power_price_usd_per_mwh.shape
    scenarios = dataclasses.replace(scenarios, available_power_fraction=np.full(shape, 0.1))
    numpy_path = group_economics(fleet, scenarios, kernel=False)
    kernel = group_economics(fleet, scenarios, kernel=True)
    assert kernel.n_coupled > scenarios.n_steps  # beyond the arrays' first size
    for name in _economics_fields():
        expected, got = getattr(numpy_path, name), getattr(kernel, name)
        if name.startswith(("coupled_", "item_")) or got.dtype.kind in "ib" or name == "run_fraction":
            np.testing.assert_array_equal(got, expected, err_msg=name)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0.005, err_msg=name)


def test_the_kernel_is_chosen_by_the_fleet_alone():
    """Large runs price with the kernel, small ones with numpy; the choice never depends on the batch."""
    from optimizer.economics import KERNEL_MIN_SITE_CELLS, uses_kernel
    from optimizer.fleet import load_fleet, with_overrides
    from tests.fleets import EXAMPLES

    example = load_fleet(EXAMPLES / "fleet.yaml")
    cells_per_scenario = example.horizon.n_steps * len(example.sites)
    below = KERNEL_MIN_SITE_CELLS // cells_per_scenario
    assert not uses_kernel(with_overrides(example, {"scenarios": {"count": below}}))
    assert uses_kernel(with_overrides(example, {"scenarios": {"count": below + 1}}))
    assert not uses_kernel(load_fleet(EXAMPLES / "tiny.yaml"))


@pytest.mark.parametrize("n_thresholds", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("follows_spot", [True, False], ids=["spot", "fixed"])
def test_kernel_sums_with_keys_inside_equal_the_stored_keys_path(n_thresholds, follows_spot):
    """A row that couples nowhere sums with its keys computed inside the loop, four thresholds at a time (a group of
    one to three repeats its last): the same run counts exactly and the same sums as the pairs over a stored row of
    keys, for any number of thresholds, with keys on both sides of each and some exactly at one."""
    from optimizer import economics_kernel as kern

    rng = np.random.default_rng(n_thresholds)
    n_steps, offset = 997, 7.5 if follows_spot else 41.0
    row_h = rng.uniform(1e-3, 3e-3, n_steps)
    row_h_pv, row_btc, discount = row_h * 0.97, row_h * 1e-5, rng.uniform(0.9, 1.0, n_steps)
    spot = rng.normal(45.0, 30.0, n_steps)
    keys = np.empty(n_steps)
    kern._keys(spot, offset, follows_spot, row_h, True, keys)
    thresholds = np.sort(rng.choice(keys, n_thresholds, replace=False))  # ties: a key equal to theta does not run
    stored, inline = (np.zeros((n_thresholds, kern.N_WEIGHTS)) for _ in range(2))
    runs_stored, runs_inline = np.zeros(n_thresholds), np.zeros(n_thresholds)
    args = (thresholds, n_thresholds, follows_spot, offset, row_h, row_h_pv, row_btc, discount, spot)
    kern._site_sums(keys, *args, stored, runs_stored)
    kern._site_sums_inline(*args, inline, runs_inline)
    expected_runs = (keys[None, :] < thresholds[:, None]).sum(axis=1)
    np.testing.assert_array_equal(runs_inline, expected_runs)
    np.testing.assert_array_equal(runs_stored, expected_runs)
    np.testing.assert_allclose(inline, stored, rtol=1e-12, atol=0)
    runs_h = np.where(keys[None, :] < thresholds[:, None], row_h[None, :], 0.0).sum(axis=1)
    np.testing.assert_allclose(inline[:, kern.W_HASHPRICE], runs_h, rtol=1e-12)


@pytest.mark.parametrize("halving", [0, 1, 63, 64, 65, 200, None])
def test_kernel_halving_step_is_the_first_lower_subsidy(halving):
    """The kernel finds the halving by a count per block of 64 steps, then the steps of the first block with one:
    the first step with a lower subsidy than the first's at a block's start, end or inside, and the step count if
    none (a rise later on does not count)."""
    from optimizer import economics_kernel as kern

    subsidy = np.full(256, 3.125)
    subsidy[-10:] = 6.25  # above the first's: never the halving
    if halving is not None:
        subsidy[halving + 1 if halving == 0 else halving : 246] = 1.5625
    expected = 256 if halving is None else max(halving, 1)
    assert kern._first_lower(subsidy) == expected
