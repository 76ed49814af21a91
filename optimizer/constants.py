"""Protocol and unit constants: the one place each figure lives.

Sources:
- Bitcoin protocol figures: Bitcoin Core consensus rules (`src/kernel/chainparams.cpp`:
  nSubsidyHalvingInterval = 210,000; `src/pow.cpp`: retarget every 2,016 blocks
  with a 600-second target spacing).
- Market figures for calibration: ../shared/DESIGN.md section 1 (February 2026).
"""

from __future__ import annotations

TARGET_BLOCK_SECONDS = 600  # consensus target spacing
BLOCKS_PER_HOUR = 3600 / TARGET_BLOCK_SECONDS
BLOCKS_PER_DAY = 24 * BLOCKS_PER_HOUR  # 144
RETARGET_INTERVAL_BLOCKS = 2016  # difficulty adjusts every 2,016 blocks (~2 weeks)
HALVING_INTERVAL_BLOCKS = 210_000  # subsidy halves every 210,000 blocks
INITIAL_SUBSIDY_BTC = 50.0  # genesis-era subsidy; 3.125 BTC from block 840,000 to 1,049,999

HOURS_PER_DAY = 24
DAYS_PER_YEAR = 365.25
DAYS_PER_MONTH = DAYS_PER_YEAR / 12  # colocation leases are priced per calendar month
TH_PER_PH = 1_000
TH_PER_EH = 1_000_000
KW_PER_MW = 1_000


def block_subsidy_btc(height):
    """Subsidy of the block at `height` (scalar or numpy array): 50 BTC halved every 210,000 blocks."""
    import numpy as np

    halvings = np.asarray(height) // HALVING_INTERVAL_BLOCKS
    return INITIAL_SUBSIDY_BTC / np.power(2.0, halvings)


HOURS_PER_YEAR = HOURS_PER_DAY * DAYS_PER_YEAR  # 8,766: the Julian year, as the discounting's time unit
MONTHS_PER_YEAR = 12
