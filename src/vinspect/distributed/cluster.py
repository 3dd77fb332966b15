"""A real multi-node Ray cluster on this machine's loopback interface, for tests, benchmarks and trying things out.

Each node is a separate ``ray start`` (a head, then nodes joining it by ``--address``), bounded in CPUs and object
store, without a dashboard, in a private temporary folder, on free loopback ports.  :meth:`LocalCluster.stop`
ends exactly the processes of this cluster (found by that folder and by the ports given to each node, and their
children), never another Ray on the machine: ``ray stop`` would stop them all.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def node_ip(i: int) -> str:
    """Node ``i``'s address: 127.0.0.2, 127.0.0.3 ... (loopback; Ray replaces 127.0.0.1 itself by the machine's
    network address, other loopback addresses it keeps, and each node is told apart by its own)."""
    return f"127.0.0.{2 + i}"

# one private token per process (Ray's token authentication; a driver in this process joins with it)
_TOKEN = secrets.token_hex(32)
AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN}


def _refresh_ray_auth() -> None:
    """Make an already imported Ray read the token settings again (it caches them; as Ray itself does when it
    turns token authentication on)."""
    if "ray" not in sys.modules:
        return
    try:
        from ray._private.authentication.authentication_token_setup import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # noqa: BLE001 - another Ray version: a driver started after the cluster still works
        pass


class ClusterUnavailable(RuntimeError):
    """Ray could not start here (the reason is the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    index: int
    node_manager_port: int
    ports: dict = field(default_factory=dict)
    ip: str = ""

    def raylet(self):
        """The node's raylet process (psutil), found by its node-manager port; None once it is gone."""
        import psutil

        flag = f"--node_manager_port={self.node_manager_port}"
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if cmd and "raylet" in os.path.basename(cmd[0]) and flag in cmd:
                return p
        return None

    def worker_processes(self) -> list:
        """The Ray worker processes of this node (the raylet's children named ``ray::...``)."""
        r = self.raylet()
        if r is None:
            return []
        out = []
        for c in r.children(recursive=True):
            try:
                if c.name().startswith("ray::") or any(a.startswith("ray::") for a in c.cmdline()[:1]):
                    out.append(c)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
        return out


class LocalCluster:
    """``with LocalCluster(nodes=2, cpus=1) as c: run(..., address=c.address)``."""

    def __init__(self, nodes: int = 2, cpus: int = 1, object_store_bytes: int = 100_000_000,
                 ray_bin: str | None = None, start_timeout: float = 120.0, env: dict | None = None):
        self.n_nodes, self.cpus, self.object_store = int(nodes), int(cpus), int(object_store_bytes)
        self.ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
        self.start_timeout = start_timeout
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", **AUTH_ENV}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        self._saved_env: dict = {}
        self.temp_dir: str | None = None
        self.address: str | None = None
        self.nodes: list[Node] = []
        self._pids: set[int] = set()

    def _start(self, i: int) -> Node:
        ports = {k: free_port() for k in ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                                           "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                           "metrics-export-port")}
        cmd = [self.ray_bin, "start", "--node-ip-address", node_ip(i), "--num-cpus", str(self.cpus), "--num-gpus", "0",
               "--object-store-memory", str(self.object_store), "--disable-usage-stats"]
        if i == 0:
            head = free_port()
            ports["port"] = head
            cmd += ["--head", "--include-dashboard", "false", "--temp-dir", self.temp_dir]
            self.address = f"{node_ip(0)}:{head}"
        else:
            cmd += ["--address", self.address]
        for k, v in ports.items():
            cmd += [f"--{k}", str(v)]
        try:
            r = subprocess.run(cmd, env=self.env, check=False, capture_output=True, text=True, timeout=self.start_timeout)
        except FileNotFoundError:
            raise ClusterUnavailable(f"{self.ray_bin}: not found (pip install 'vinspect[ray]')") from None
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"'ray start' of node {i} took more than {self.start_timeout:.0f} s") from None
        node = Node(i, ports["node-manager-port"], ports, node_ip(i))
        self.nodes.append(node)
        self._remember()
        if r.returncode != 0:
            tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise ClusterUnavailable(f"'ray start' of node {i} failed (exit {r.returncode}): {tail[-400:]}")
        return node

    def _remember(self) -> None:
        """Note the pids of this cluster's processes (they are stopped by pid, never by name)."""
        import psutil

        flags = [f"--node_manager_port={n.node_manager_port}" for n in self.nodes]
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if (self.temp_dir and self.temp_dir in cmd) or any(f in cmd for f in flags):
                self._pids.add(p.pid)
                try:
                    self._pids.update(c.pid for c in p.children(recursive=True))
                except Exception:  # noqa: BLE001
                    pass

    def start(self) -> LocalCluster:
        try:
            import psutil  # noqa: F401 (a dependency of Ray)
        except ImportError:
            raise ClusterUnavailable("psutil is not installed (pip install 'vinspect[ray]')") from None
        # short: Ray's socket paths live under it and must stay under the 107-byte limit of Unix sockets
        self.temp_dir = tempfile.mkdtemp(prefix="vray", dir="/tmp")
        # a driver in this process joins with the cluster's token (restored by stop)
        self._saved_env = {k: os.environ.get(k) for k in (*AUTH_ENV, "RAY_AUTH_TOKEN_PATH")}
        os.environ.update(AUTH_ENV)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        _refresh_ray_auth()
        try:
            for i in range(self.n_nodes):
                self._start(i)
            self._wait_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_nodes(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if all(n.raylet() is not None for n in self.nodes):
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"the {self.n_nodes} raylets did not all come up in {self.start_timeout:.0f} s")

    def stop(self) -> None:
        import psutil

        self._remember()
        procs = []
        for pid in self._pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}
        _refresh_ray_auth()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
