#!/usr/bin/env bash
# Regenerate the Python code and type stubs of the gRPC contract (protos/hashpivot/v1/*.proto).
#
#   scripts/gen_protos.sh            # into protos/ (what is committed)
#   scripts/gen_protos.sh OUT_DIR    # into OUT_DIR/protos/ (the freshness test compares the two)
#
# protoc (grpcio-tools) writes *_pb2.py and *_pb2_grpc.py, mypy-protobuf the *.pyi stubs. The protos
# import each other as "hashpivot/v1/..." (buf's module root is protos/), so the generated imports
# are rewritten to the importable package path "protos.hashpivot.v1". The generator versions are
# pinned in pyproject.toml: a different version writes different code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
OUT="${1:-.}/protos"
mkdir -p "$OUT"

"$PYTHON" -m grpc_tools.protoc \
  -I protos \
  -I third_party/googleapis \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" \
  --python_out="$OUT" \
  --grpc_python_out="$OUT" \
  --mypy_out="$OUT" \
  --mypy_grpc_out="$OUT" \
  protos/hashpivot/v1/*.proto

"$PYTHON" - "$OUT/hashpivot/v1" <<'PY'
import pathlib
import re
import sys

for path in sorted(pathlib.Path(sys.argv[1]).glob("*_pb2*.py*")):
    text = path.read_text()
    text = re.sub(r"^from hashpivot\.v1 import", "from protos.hashpivot.v1 import", text, flags=re.M)
    text = re.sub(r"^import hashpivot\.v1\.", "import protos.hashpivot.v1.", text, flags=re.M)
    text = re.sub(r"(?<![\w.])hashpivot\.v1\.(\w+_pb2)\b", r"protos.hashpivot.v1.\1", text)
    path.write_text(text)

# protoc writes a *_pb2_grpc module for every file; only files that define a service need one.
for path in sorted(pathlib.Path(sys.argv[1]).glob("*_pb2_grpc.py")):
    if "Stub" not in path.read_text():
        path.unlink()
        path.with_suffix(".pyi").unlink(missing_ok=True)
PY
