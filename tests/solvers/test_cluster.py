"""A real two-node Ray cluster on this machine: the decomposition's tasks run on both nodes, and the plan
made with --ray-address equals the embedded run's.

The cluster is this module's own: `ray start --head` and `ray start --address` with their own temp dirs,
free ports and token; `--block` keeps each `ray start` in the foreground so that terminating it stops
the processes it started, and anything left is found by its temp dir in its command line and stopped
by process id (never `ray stop`, which would stop every Ray on the machine). About 30-50 s.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.fleets import EXAMPLES, ROOT

pytestmark = pytest.mark.timeout(360)

# `ray start` replaces a loopback --node-ip-address and --address by the machine's routable IP
# (services.resolve_ip_for_localhost); a CI sandbox may not route that IP to itself. This cluster is
# kept on 127.0.0.1 by starting Ray's own CLI with that replacement turned off.
RAY_START = (
    "import sys; from ray._private import services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
HASHPIVOT = str(Path(sys.executable).parent / "hashpivot")


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _node_args(temp_dir: str) -> list[str]:
    manager, objects, agent, client, metrics, runtime_env, grpc_agent = _free_ports(7)
    low = 20_000 + secrets.randbelow(30_000)
    return [
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={grpc_agent}",
        f"--ray-client-server-port={client}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 200}",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        "--block",
    ]


# How many nodes run tasks now: a node counts once a task has run on it, not when it has registered
NODES_READY = """
import sys, ray
from solvers.ray_pool import ensure_ray
ensure_ray(sys.argv[1])
where = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(lambda: ray.get_runtime_context().get_node_id())
print(len(set(ray.get([where.remote() for _ in range(4 * len(ray.nodes()))]))))
"""


class Cluster:
    def __init__(self) -> None:
        self.dirs = [tempfile.mkdtemp(prefix="hpray", dir="/tmp") for _ in range(2)]  # short: socket paths
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def start(self, attempts: int = 3) -> None:
        for _ in range(attempts):  # a port taken between choosing and binding: try other ports
            (port,) = _free_ports(1)
            head = self._spawn(["--head", f"--port={port}", "--include-dashboard=false", *_node_args(self.dirs[0])])
            if self._wait_nodes(f"127.0.0.1:{port}", 1, head):
                self.address = f"127.0.0.1:{port}"
                break
            self.stop()
        else:
            raise RuntimeError("the head node did not start")
        for _ in range(attempts):
            worker = self._spawn([f"--address={self.address}", *_node_args(self.dirs[1])])
            if self._wait_nodes(self.address, 2, worker):
                return
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=20)
            error = worker.stderr.read()[-2000:] if worker.stderr else ""
        raise RuntimeError(f"the second node did not join: {error}")

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", RAY_START, "start", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def _wait_nodes(self, address: str, count: int, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
        script = NODES_READY
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:  # a node still starting may keep a joining driver waiting: ask again, within the deadline
                out = subprocess.run(
                    [sys.executable, "-c", script, address],
                    env=self.env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            except subprocess.TimeoutExpired:
                continue
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return True
            time.sleep(1)
        return False

    def stop(self) -> None:
        for proc in reversed(self.procs):  # `ray start --block` stops its own processes on SIGTERM
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        # whatever is left of this cluster: found by its temp dirs, stopped by process id
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info.get("cmdline") or ())
            if any(d in cmdline for d in self.dirs) and p.pid != os.getpid():
                try:
                    p.kill()
                except psutil.Error:
                    pass

    def cleanup(self) -> None:
        self.stop()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


def _fleet_file(tmp_path: Path) -> Path:
    data = yaml.safe_load((EXAMPLES / "fleet.yaml").read_text())
    data["horizon"] = {"start": str(data["horizon"]["start"]), "days": 91, "step_hours": 1}
    data["scenarios"] = {"count": 40, "seed": 11, "batch_size": 5}
    data["solver"] = {**data["solver"], "method": "decomposition", "time_limit_s": 120}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


DRIVER = """
import json, sys
import numpy as np
from optimizer.fleet import load_fleet
from solvers.decomposition import solve_decomposition
from solvers.planner import ScenarioSpec, compute_economics
from solvers.ray_pool import ensure_ray
fleet = load_fleet(sys.argv[1])
ensure_ray(sys.argv[2])
economics, _ = compute_economics(fleet, ScenarioSpec(count=fleet.scenarios.count, seed=fleet.scenarios.seed), 5)
result = solve_decomposition(fleet, economics, fleet.risk, fleet.solver, 120, workers=2)
out = {"nodes": list(result.report.nodes), "y": result.y.tolist(), "objective": result.outcome.objective_usd}
print(json.dumps(out))
"""


def _plan(fleet: Path, out: Path, env: dict, address: str | None) -> dict:
    args = [HASHPIVOT, "plan", str(fleet), "--out", str(out), "--no-robustness"]
    if address:
        args += ["--ray-address", address]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "plan.json").read_text())


def test_two_node_cluster_runs_the_scenario_work_on_both_nodes_and_plans_the_same(cluster, tmp_path):
    fleet = _fleet_file(tmp_path)
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(fleet), cluster.address],
        env=cluster.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert driver.returncode == 0, driver.stderr[-2000:]
    remote = json.loads(driver.stdout.strip().splitlines()[-1])
    assert len(remote["nodes"]) == 2, remote["nodes"]  # tasks ran on the head and on the second node
    assert "in-process" not in remote["nodes"]

    # the same solve here, in-process: the same master solutions, bit for bit
    from optimizer.fleet import load_fleet
    from solvers.decomposition import solve_decomposition
    from solvers.planner import ScenarioSpec, compute_economics
    from solvers.ray_pool import in_process

    local_fleet = load_fleet(fleet)
    with in_process():
        economics, _ = compute_economics(local_fleet, ScenarioSpec(count=40, seed=11), 5)
        here = solve_decomposition(local_fleet, economics, local_fleet.risk, local_fleet.solver, 120)
    assert remote["y"] == here.y.tolist()
    assert remote["objective"] == here.outcome.objective_usd

    # the CLI with --ray-address plans what the embedded run plans
    embedded_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    on_cluster = _plan(fleet, tmp_path / "cluster", cluster.env, cluster.address)
    embedded = _plan(fleet, tmp_path / "embedded", embedded_env, None)
    assert on_cluster["allocation"] == embedded["allocation"]
    assert on_cluster["profit"] == embedded["profit"]
    assert on_cluster["solver"]["objective_usd"] == embedded["solver"]["objective_usd"]
    assert on_cluster["solver"]["status"] == "optimal"
