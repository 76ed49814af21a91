"""`hashpivot sweep`: the tornado ranks inputs as hand arithmetic does; grids give a decision map."""

import csv

import pytest

from optimizer.sweep import SweepInputError, Vary, apply_inputs, parse_vary, sweep_points, target, tornado
from services.cli import main
from services.sweep import run_sweep
from tests.conftest import EXAMPLES

DAYS, RACKS = 3, 4


def linear_fleet() -> dict:
    """All racks mine every hour at every swept value, so profit is linear in the inputs:
    mean profit = racks x days x (2,000 TH/s x hashprice / 1,000 x (1 - 2% fee) - 36.75 kW x 24 h / 1,000 x price)
                = 12 x (1.96 x hashprice - 0.882 x price)."""
    return {
        "name": "linear",
        "horizon": {"start": "2026-12-01", "days": DAYS, "step_hours": 1},
        "bitcoin": {"hashprice_usd_per_ph_day": 40.0},
        "pool_fee_fraction": 0.02,
        "markets": [{"id": "m", "mean_price_usd_per_mwh": 40}],
        "machines": [{"id": "s21", "hashrate_ths": 200, "efficiency_j_per_th": 17.5}],
        "sites": [
            {
                "id": "fx",
                "market": "m",
                "capacity_mw": 1,
                "pue_mining": 1.05,
                "contract": {"type": "fixed", "price_usd_per_mwh": 40},
            },
        ],
        "rack_groups": [{"id": "g", "site": "fx", "machine": "s21", "racks": RACKS, "machines_per_rack": 10}],
        "scenarios": {"count": 2, "seed": 1, "batch_size": 2},
        "solver": {"time_limit_s": 30, "mip_rel_gap": 0.0},
    }


def test_tornado_ranks_inputs_as_hand_arithmetic(ray_session):
    varies = [parse_vary("btc_price=50000:90000:2"), parse_vary("power.fx=30:60:2"), parse_vary("hashprice=25:50:2")]
    rows = run_sweep(linear_fleet(), varies, grid=False)
    assert [r["status"] for r in rows] == ["ok"] * 7
    bars = tornado(rows, varies, "mean_usd")
    assert [b.key for b in bars] == ["hashprice", "power.fx", "btc_price"]
    per = RACKS * DAYS
    assert bars[0].swing == pytest.approx(per * 1.96 * 25, rel=1e-9)  # 588
    assert bars[1].swing == pytest.approx(per * 0.882 * 30, rel=1e-9)  # 317.52
    assert bars[1].metric_at_low > bars[1].metric_at_high  # dearer power, less profit
    assert bars[2].swing == pytest.approx(0, abs=1e-6)  # hashprice pinned: BTC no longer matters
    assert rows[0]["mean_usd"] == pytest.approx(per * (1.96 * 40 - 0.882 * 40), rel=1e-9)


def test_sweep_command_grid_writes_csv_and_decision_map(ray_session, tmp_path, capsys):
    out = tmp_path / "new" / "sw"  # made when the sweep is done, not before
    args = ["sweep", str(EXAMPLES / "tiny.yaml"), "--scenarios", "4", "--grid", "--out", str(out)]
    assert main([*args, "--vary", "hashprice=25,50", "--vary", "offer.neocloud.rate=40,180"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["varied"] for r in rows] == ["base", "grid", "grid", "grid", "grid"]
    by = {(float(r["hashprice"]), float(r["offer.neocloud.rate"])): r for r in rows[1:]}
    assert by[(50.0, 180.0)]["texas:mode"] == "ai"  # a rich lease wins the AI-ready site
    assert by[(50.0, 40.0)]["texas:mode"] == "mine"  # a poor one does not
    assert (out / "decision_map.png").read_bytes()[:4] == b"\x89PNG"


def test_vary_keys_and_bad_inputs(tiny_fleet_data, tmp_path, capsys):
    from optimizer.fleet import parse_fleet

    data = parse_fleet(tiny_fleet_data).model_dump(mode="json")
    assert parse_vary("btc_price=55000:90000:5").values == (55000, 63750, 72500, 81250, 90000)
    assert target(data, "power.hydro")[1] == "price_usd_per_mwh"  # fixed site: its contract
    assert target(data, "power.texas") == target(data, "power.ercot_west")  # index site: its market
    assert apply_inputs(data, {"sites.texas.capacity_mw": 9})["sites"][1]["capacity_mw"] == 9
    assert apply_inputs(data, {"rack_groups.texas-s21.racks": 12.0})["rack_groups"][2]["racks"] == 12
    assert len(sweep_points([Vary("a", (1, 2)), Vary("b", (3, 4, 5))], grid=True)) == 1 + 6
    for bad, message in (
        ("btc_price", "expected KEY=LO:HI:N"),
        ("btc_price=1:2:1", "N must be 2-200"),
        ("offer.nope.rate=1,2", "no entry with id 'nope'"),
        ("power.mars=1,2", "no market or site 'mars'"),
    ):
        with pytest.raises(SweepInputError, match=message):
            target(data, parse_vary(bad).key) if "=" in bad and ":" not in bad.split("=")[1] else parse_vary(bad)
    # a value the fleet rejects names the point, before any plan runs
    assert main(["sweep", str(EXAMPLES / "tiny.yaml"), "--vary", "hashprice=-5,30", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vary hashprice=-5" in err[0] and "bitcoin.hashprice_usd_per_ph_day" in err[0]
