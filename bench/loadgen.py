"""The compiled Dispatch load generator (bench/loadgen/dispatch_load.cc): built on first use, run, measured.

bench_service.py's Dispatch rows share the machine's 2 cores with the server they measure. Its Python
clients spend 0.32-0.45 ms of CPU per call (~0.75 of a core at 2,000 calls/s), so they slow the server
and their own timing; the C++ generator sends the same calls with the same closed- and open-loop
semantics for 0.15-0.20 ms per call (gRPC C-core's own work is ~0.09 ms of it), and reports its CPU so
each row can print the client's cost per call (docs/service.md, "Dispatch under load").

The binary is compiled with g++ -O2 against Debian's gRPC C++ library (grpc 1.51) into build/loadgen/
(gitignored), named by the hash of the source and the compiler flags, so an edit or another gRPC version
builds anew and an unchanged one is reused. Without the library, `binary()` raises `Unavailable` with the
install command. Only the bench needs it: its tests (tests/bench/test_loadgen.py) skip without it, and
CI does not install it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(__file__).resolve().parent / "loadgen" / "dispatch_load.cc"
BUILD_DIR = ROOT / "build" / "loadgen"  # build/ is in .gitignore
INSTALL = "apt-get install -y g++ pkg-config libgrpc++-dev"
# dispatch_load.cc's exit codes: every call OK; bad arguments or a client that could not connect; a call
# of the measured window failed (its summary, with the failed calls by code, is still printed).
EXIT_OK, EXIT_SETUP, EXIT_FAILED_CALLS = 0, 2, 3


class Unavailable(RuntimeError):
    """The generator cannot be built here (no compiler or no gRPC C++ headers)."""


@dataclass
class Measured:
    """One Dispatch row's calls, from either generator."""

    rate: float  # calls completed per second
    latencies_s: list[float]
    client_cpu_s: float  # the clients' own CPU (user + system) over the measured window
    generator: str  # "C++" or "Python": who sent the calls


def _compiler_flags() -> list[str]:
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        raise Unavailable(f"the C++ Dispatch load generator needs g++ and pkg-config: {INSTALL}")
    found = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    if found.returncode != 0:
        raise Unavailable(f"the C++ Dispatch load generator needs gRPC's C++ library (grpc++): {INSTALL}")
    return found.stdout.split()


def binary() -> Path:
    """The compiled generator, built now unless this source and these flags were built before."""
    flags = _compiler_flags()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    path = BUILD_DIR / f"dispatch_load-{key}"
    if path.exists():
        return path
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # renamed when complete: no half-written binary
    build = ["g++", "-O2", "-std=c++17", "-pthread", "-o", str(partial), str(SOURCE), *flags]
    built = subprocess.run(build, capture_output=True, text=True)
    if built.returncode != 0:
        raise Unavailable(f"building {SOURCE.name} failed ({INSTALL}?):\n{built.stderr[-2000:]}")
    partial.replace(path)
    for stale in BUILD_DIR.glob("dispatch_load-*"):  # builds of earlier sources: never run again
        if stale != path and not stale.name.endswith(".partial"):
            stale.unlink(missing_ok=True)
    return path


def write_requests(path: Path, requests: list[bytes]) -> None:
    """Serialized messages, each after its length as 4 bytes little-endian: dispatch_load.cc's --requests."""
    with open(path, "wb") as f:
        for message in requests:
            f.write(struct.pack("<I", len(message)))
            f.write(message)


def run(
    target: str,
    method: str,
    requests: list[bytes],
    metadata: tuple[tuple[str, str], ...],
    clients: int,
    seconds: float,
    total_rate: float | None = None,
) -> Measured:
    """`clients` clients call `method` with `requests` round-robin: back to back for `seconds`
    (`total_rate` None) or together at `total_rate` calls/s. Raises if any call did not return OK."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="dispatch-load-") as tmp:
        write_requests(Path(tmp) / "requests", requests)
        command = [str(binary()), "--target", target, "--method", method, "--clients", str(clients)]
        command += ["--seconds", str(seconds), "--requests", f"{tmp}/requests", "--out", f"{tmp}/latencies"]
        command += [arg for key, value in metadata for arg in ("--metadata", f"{key}={value}")]
        if total_rate is not None:
            command += ["--rate", str(total_rate)]
        # Generous: an open loop the server cannot keep up with runs on past `seconds` to its last call.
        done = subprocess.run(command, capture_output=True, text=True, timeout=120 + 20 * seconds)
        if done.returncode not in (EXIT_OK, EXIT_FAILED_CALLS):
            said = done.stderr.strip()[-2000:]
            raise RuntimeError(f"the Dispatch load generator failed (exit {done.returncode}): {said}")
        summary = _summary(done.stdout)
        if done.returncode == EXIT_FAILED_CALLS:
            ok = f"{summary['calls']:,.0f} returned OK"
            raise RuntimeError(f"Dispatch calls failed under load: {_failures(done.stdout)}; {ok}")
        latencies = np.fromfile(f"{tmp}/latencies", dtype=np.float64).tolist()
    if len(latencies) != summary["calls"]:
        raise RuntimeError(f"the generator reported {summary['calls']:.0f} calls but wrote {len(latencies)} latencies")
    return Measured(len(latencies) / summary["span_s"], latencies, summary["cpu_s"], "C++")


def _summary(stdout: str) -> dict[str, float]:
    """`calls`, `span_s` and `cpu_s` from the generator's `NAME VALUE` lines."""
    fields = dict(line.split(" ", 1) for line in stdout.splitlines() if not line.startswith("failed "))
    return {name: float(fields[name]) for name in ("calls", "span_s", "cpu_s")}


def _failures(stdout: str) -> str:
    """The generator's `failed CODE N` lines as 'N UNAVAILABLE, ...' (gRPC's status code names)."""
    import grpc

    names = {code.value[0]: code.name for code in grpc.StatusCode}
    failed = [line.split()[1:] for line in stdout.splitlines() if line.startswith("failed ")]
    return ", ".join(f"{int(n):,} {names.get(int(code), f'code {code}')}" for code, n in failed)
