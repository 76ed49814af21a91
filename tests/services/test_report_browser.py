"""report.html as a board member sees it: rendered by headless Chromium (Debian's `chromium` package).

`make test` installs chromium when missing (Makefile target `browser`); without it this test skips and says so.
"""

import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread

from services.report import write_report
from tests.services.test_report import hedge_run  # noqa: F401 - the module-scoped plan and robustness run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
MINING_ORANGE = np.array([0xF2, 0xA9, 0x00]) / 255  # services.report.MODE_COLORS[Mode.MINE]
AI_BLUE = np.array([0x3B, 0x7D, 0xD8]) / 255


def _chromium(*args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout


def test_report_renders_in_chromium_with_allocation_table_and_charts(hedge_run, tmp_path):  # noqa: F811
    fleet, plan, run = hedge_run
    write_report(fleet, plan, run, tmp_path)
    page = (tmp_path / "report.html").as_uri()
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", page)
    assert '<table id="allocation">' in dom
    for group in fleet.rack_groups:
        assert f"<td>{group.id}</td>" in dom
    assert dom.count('src="data:image/png;base64,') == 5

    shot = tmp_path / "report.png"
    _chromium("--window-size=1300,2400", f"--screenshot={shot}", page)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1300)
    # the allocation chart (the first image on the page) is drawn: mining orange and AI blue bars are on screen
    for color in (MINING_ORANGE, AI_BLUE if plan.totals()["ai"] else MINING_ORANGE):
        near = np.abs(pixels - color).max(axis=2) < 0.03
        assert near.sum() > 2_000, f"too few pixels of {color}: the chart did not render"
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200  # not a blank page


PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  for (const id of %s) {
    const el = document.getElementById(id);
    if (!el) { out[id] = null; continue; }
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    out[id] = {width: box.width, height: box.height, display: style.display, visibility: style.visibility,
               natural: el.naturalWidth || 0, rows: el.rows ? el.rows.length : 0, text: el.innerText || ""};
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def tree_report_page(ray_session, tmp_path_factory):
    """report.html of a plan on a 0,6 x3 tree where one month-6 node converts and two wait (quick robustness)."""
    import json

    import yaml

    from services.cli import main
    from tests.optimizer.test_multistage import waiting_fleet_data

    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    folder = tmp_path_factory.mktemp("tree-report")
    (folder / "fleet.yaml").write_text(yaml.safe_dump(data))
    quick = ["--oos-scenarios", "10", "--replications", "0", "--wait-and-see", "0", "--no-sensitivity"]
    tree = ["--decision-dates", "0,6", "--tree-replications", "2", "--tree-oos-trees", "2"]
    assert main(["plan", str(folder / "fleet.yaml"), *quick, *tree, "--out", str(folder / "out")]) == 0
    return folder / "out", json.loads((folder / "out" / "plan.json").read_text())["tree"]


def test_tree_section_with_node_decisions_and_rule_chart_is_visible(tree_report_page, tmp_path):
    import json
    import re

    out, tree = tree_report_page
    ids = ["tree-values", "tree-oos", "tree-nodes", "tree-regions", "chart-tree", "chart-rule_a"]
    html = (out / "report.html").read_text().replace("</body>", PROBE % json.dumps(ids) + "</body>")
    page = tmp_path / "report.html"
    page.write_text(html)
    dom = _chromium("--window-size=1300,2400", "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1))
    for element in ids:  # present, laid out with a size, not hidden
        seen = probe[element]
        assert seen is not None, f"#{element} is missing"
        assert seen["width"] > 100 and seen["height"] > 20, (element, seen)
        assert seen["display"] != "none" and seen["visibility"] == "visible", (element, seen)
    for chart in ("chart-tree", "chart-rule_a"):  # the PNG decoded at its drawn size (110 dpi figures)
        assert probe[chart]["natural"] > 400 and probe[chart]["height"] > 300, probe[chart]
    decision_nodes = [n for n in tree["tree"] if n["decision_month"] is not None]
    assert probe["tree-nodes"]["rows"] == 1 + len(decision_nodes) == 1 + 1 + 3  # header, the root, month 6
    deciding = [n for n in decision_nodes if n["conversions"] or n["lifecycles"]]
    assert deciding, "the designed tree decides something at some node"
    rows = {line.split("\t", 1)[0]: line for line in probe["tree-nodes"]["text"].splitlines()}
    for n in deciding:  # each node's decisions are in its row: conversions, then racks put on each lifecycle
        row = rows[str(n["node"])]
        for site, start in n["conversions"].items():
            assert f"{site}@{start}" in row
        for count in n["lifecycles"]:
            assert f"{count['group']}: {count['lifecycle']}={count['racks']}" in row
    regions = [r for rule in tree["decision_rules"] for r in rule["regions"] if rule["classified_nodes"]]
    assert probe["tree-regions"]["rows"] == 1 + len(regions)
    for region in regions:
        assert region["text"] in probe["tree-regions"]["text"]
    trees = tree["out_of_sample_trees"]
    assert trees == 2 and f"{trees} fresh trees" in dom
    assert probe["tree-oos"]["rows"] == 1 + 3 + 2  # header, three policies, two differences with intervals
