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
