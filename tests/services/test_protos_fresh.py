"""The committed generated code is what scripts/gen_protos.sh makes from the .proto files, and buf lint passes."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import dev_tool

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "protos" / "hashpivot" / "v1"


def generated_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*_pb2*.py*"))


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},  # the generators of this interpreter's environment
    )
    fresh = tmp_path / "protos" / "hashpivot" / "v1"
    assert generated_files(fresh), "the generator wrote nothing"
    assert generated_files(GENERATED) == generated_files(fresh), "run scripts/gen_protos.sh (make protos)"
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, fresh, generated_files(fresh), shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch + errors}: run scripts/gen_protos.sh"


def test_buf_lint():
    result = subprocess.run([dev_tool("buf"), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
