import json

import pytest

from optimizer.fleet import FleetError, fleet_json_schema, load_fleet, parse_fleet, with_overrides
from tests.fleets import EXAMPLES, small_fleet_data


def violation(data: dict) -> dict[str, str]:
    with pytest.raises(FleetError) as info:
        parse_fleet(data)
    return dict(info.value.violations)


def test_example_fleet_is_calibrated_and_large():
    fleet = load_fleet(EXAMPLES / "fleet.yaml")
    assert len(fleet.sites) >= 4 and len(fleet.lease_offers) >= 2
    efficiencies = sorted(m.efficiency_j_per_th for m in fleet.machines)
    assert len(efficiencies) >= 4 and efficiencies[0] <= 14 and efficiencies[-1] >= 29
    assert 2_000 <= fleet.total_racks <= 10_000
    assert any(s.ai is None and s.contract.type.value == "fixed" for s in fleet.sites)
    assert any(s.ai is not None and s.contract.type.value == "index" for s in fleet.sites)


def test_machine_power_from_efficiency():
    fleet = parse_fleet(small_fleet_data())
    # 200 TH/s x 17.5 J/TH = 3,500 W; ten per rack
    assert fleet.rack_power_kw(fleet.rack_groups[2]) == pytest.approx(35.0)


@pytest.mark.parametrize(
    "mutate, path, fragment",
    [
        (lambda d: d["sites"][0].update(capacity_mw=-5), "sites.0.capacity_mw", "-5"),
        (lambda d: d["machines"][0].update(efficiency_j_per_th=0.03), "machines.0.efficiency_j_per_th", "0.03"),
        (lambda d: d["rack_groups"][1].update(site="nowhere"), "rack_groups.1.site", "nowhere"),
        (lambda d: d["rack_groups"][0].update(machine="s9"), "rack_groups.0.machine", "s9"),
        (lambda d: d["machines"].append(dict(d["machines"][0])), "machines", "duplicate id 'old'"),
        (lambda d: d["sites"][1]["ai"].update(min_mw=1.0), "sites.1.ai", "min_mw"),
        (lambda d: d["sites"][1]["ai"].update(min_mw=0.2, max_mw=0.3), "sites.1.ai.min_mw", "exceeds capacity_mw"),
        (lambda d: d["lease_offers"][0].update(sites=["fixed"]), "lease_offers.0.sites.0", "not AI-ready"),
        (lambda d: d["sites"][0].update(pue=1.1), "sites.0.pue", "Extra inputs"),
        (lambda d: d["sites"][0]["contract"].pop("price_usd_per_mwh"), "sites.0.contract", "price_usd_per_mwh"),
        (lambda d: d["horizon"].update(step_hours=5), "horizon.step_hours", "must be one of"),
        (lambda d: d["rack_groups"][0].update(racks=-1), "rack_groups.0.racks", "-1"),
    ],
)
def test_errors_name_field_and_value(mutate, path, fragment):
    data = small_fleet_data()
    mutate(data)
    errors = violation(data)
    assert path in errors, errors
    assert fragment in errors[path]


def test_json_fleet_and_bad_file(tmp_path):
    good = tmp_path / "fleet.json"
    good.write_text(json.dumps(small_fleet_data()))
    assert load_fleet(good).name == "small"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [unclosed")
    with pytest.raises(FleetError, match="not valid yaml"):
        load_fleet(bad)


def test_overrides_are_validated():
    fleet = parse_fleet(small_fleet_data())
    assert with_overrides(fleet, {"scenarios": {"count": 9}}).scenarios.count == 9
    with pytest.raises(FleetError) as info:
        with_overrides(fleet, {"risk": {"alpha": 1.5}})
    assert "risk.alpha" in dict(info.value.violations)


def test_schema_is_published():
    schema = fleet_json_schema()
    assert {"sites", "rack_groups", "lease_offers", "markets"} <= set(schema["properties"])


def test_published_schema_is_fresh():
    """schemas/fleet.schema.json is what `hashpivot schema` prints; `make schema` refreshes it."""
    published = json.loads((EXAMPLES.parent / "schemas" / "fleet.schema.json").read_text())
    assert published == fleet_json_schema()
