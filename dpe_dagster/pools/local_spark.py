"""A node pool of Spark standalone workers on this machine: real processes, started and stopped.

The master starts with the first worker and stops with the last one. Each worker is one node; a
worker that holds executors (cores in use, as the master reports them) is busy and is never stopped.
The processes are the source of truth: the pool reads pid files and the master's JSON status, so any
process (the daemon, a sensor, the CLI) sees the same pool.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from dpe_dagster.config import ConfigError, PoolConfig
from dpe_dagster.javaenv import spark_home, spark_process_env
from dpe_dagster.paths import dpe_home
from dpe_dagster.pools.base import PENDING, RUNNING, Node, PoolError

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOCAL_SETTINGS = {"master_port", "master_webui_port", "worker_port_base", "worker_webui_port_base", "state_dir",
                  "daemon_memory"}


@dataclass(frozen=True)
class LocalSparkSettings:
    master_port: int = 7077
    master_webui_port: int = 8080
    worker_port_base: int = 7100
    worker_webui_port_base: int = 8100
    state_dir: Path | None = None
    daemon_memory: str = "512m"

    @classmethod
    def parse(cls, pool_name: str, raw: dict) -> "LocalSparkSettings":
        unknown = sorted(set(raw) - LOCAL_SETTINGS)
        if unknown:
            raise ConfigError(
                f"pools.{pool_name}.settings: unknown field(s) {', '.join(unknown)}; "
                f"allowed for provider local: {', '.join(sorted(LOCAL_SETTINGS))}"
            )
        values = {}
        for key in ("master_port", "master_webui_port", "worker_port_base", "worker_webui_port_base"):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65000:
                    raise ConfigError(f"pools.{pool_name}.settings.{key}: must be a port number 1024-65000; got {value!r}")
                values[key] = value
        if "state_dir" in raw:
            values["state_dir"] = Path(raw["state_dir"])
        if "daemon_memory" in raw:
            values["daemon_memory"] = str(raw["daemon_memory"])
        return cls(**values)


def _alive(pid: int, expected_class: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    # A recycled pid belongs to another program: check it is still our JVM.
    return expected_class in cmdline


def spark_pids_of(home: Path) -> set[int]:
    """Live Spark JVMs (pool daemons and run drivers) started under this DPE_HOME, found by the
    environment they inherited, so other Spark processes on the machine are never counted."""
    marker = f"DPE_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"org.apache.spark" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


_WORKER_PORT_LINE = re.compile(r"Successfully started service 'sparkWorker' on port (\d+)")


class LocalSparkPool:
    """A `NodePool` whose nodes are Spark standalone workers on this machine."""

    def __init__(self, config: PoolConfig, settings: LocalSparkSettings):
        self.name = config.name
        self.config = config
        self.settings = settings
        self.state_dir = (settings.state_dir or dpe_home() / "pools" / config.name).resolve()
        self.pid_dir = self.state_dir / "pids"
        self.log_dir = self.state_dir / "logs"
        self.ident = f"dpe-{config.name}"

    @classmethod
    def from_config(cls, config: PoolConfig) -> "LocalSparkPool":
        return cls(config, LocalSparkSettings.parse(config.name, dict(config.settings)))

    # -- addresses --------------------------------------------------------------------------
    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.settings.master_port}"

    @property
    def master_webui(self) -> str:
        return f"http://127.0.0.1:{self.settings.master_webui_port}"

    # -- NodePool -----------------------------------------------------------------------------
    def target(self) -> int:
        try:
            return int((self.state_dir / "target").read_text())
        except (OSError, ValueError):
            return 0

    def set_target(self, size: int) -> None:
        if size < 0 or size > self.config.max_size:
            raise PoolError(f"pool {self.name}: target {size} is outside 0..{self.config.max_size}")
        running = self._worker_instances()
        if size < len(running):
            raise PoolError(
                f"pool {self.name}: target {size} would stop {len(running) - size} worker(s); "
                "scale in goes through remove_nodes so that only idle workers are stopped"
            )
        self._write_target(size)
        if size == 0:
            return
        self._ensure_master()
        free = [i for i in range(1, self.config.max_size + 1) if i not in running]
        self._start_workers(free[: size - len(running)])

    def nodes(self) -> list[Node]:
        status = self._master_status()
        by_port = {w.get("port"): w for w in (status or {}).get("workers", []) if w.get("state") == "ALIVE"}
        nodes = []
        for instance, pid in sorted(self._worker_instances().items()):
            registered = by_port.get(self._worker_port(instance))
            nodes.append(
                Node(
                    id=self._node_id(instance),
                    state=RUNNING if registered else PENDING,
                    launched_at=self._pid_file(WORKER_CLASS, instance).stat().st_mtime,
                    # Unknown counts as busy: a worker we cannot see must not be stopped.
                    busy=bool(registered.get("coresused", 1)) if registered else status is None,
                    lifecycle=self.config.lifecycle,
                    instance_type=f"local-{self.config.node_cpus:g}cpu-{self.config.node_memory_gb:g}g",
                )
            )
        return nodes

    def remove_nodes(self, node_ids: Sequence[str]) -> None:
        instances = self._worker_instances()
        wanted = {}
        for node_id in node_ids:
            instance = self._instance_of(node_id)
            if instance not in instances:
                raise PoolError(f"pool {self.name}: no node {node_id!r}")
            wanted[node_id] = instance
        # Check busy at the last moment, from the master, not from the caller's older view.
        busy = {n.id for n in self.nodes() if n.busy}
        refused = sorted(set(wanted) & busy)
        if refused:
            raise PoolError(f"pool {self.name}: refusing to remove busy node(s) {', '.join(refused)}")
        for node_id, instance in wanted.items():
            self._stop(WORKER_CLASS, instance)
        self._write_target(max(0, self.target() - len(wanted)))
        if not self._worker_instances() and self.target() == 0:
            self._stop(MASTER_CLASS, 1)

    # -- lifecycle helpers --------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every process of this pool, busy or not (used when dpe itself stops)."""
        for instance in self._worker_instances():
            self._stop(WORKER_CLASS, instance)
        self._stop(MASTER_CLASS, 1)
        self._write_target(0)

    def pids(self) -> list[int]:
        """Pids of this pool's live Spark processes (master and workers)."""
        found = [pid for pid in self._worker_instances().values()]
        master = _read_pid(self._pid_file(MASTER_CLASS, 1))
        if master and _alive(master, MASTER_CLASS):
            found.append(master)
        return found

    def wait_for_master(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._master_status() is not None:
                return
            time.sleep(0.5)
        raise PoolError(f"pool {self.name}: Spark master at {self.master_webui} did not come up within {timeout_s:g}s; "
                        f"see logs in {self.log_dir}")

    def _node_id(self, instance: int) -> str:
        return f"{self.name}-worker-{instance}"

    def _instance_of(self, node_id: str) -> int:
        prefix = f"{self.name}-worker-"
        if not node_id.startswith(prefix) or not node_id[len(prefix):].isdigit():
            raise PoolError(f"pool {self.name}: {node_id!r} is not a node id of this pool")
        return int(node_id[len(prefix):])

    def _write_target(self, size: int) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "target.tmp"
        tmp.write_text(str(size))
        tmp.replace(self.state_dir / "target")

    def _pid_file(self, cls: str, instance: int) -> Path:
        return self.pid_dir / f"spark-{self.ident}-{cls}-{instance}.pid"

    def _worker_instances(self) -> dict[int, int]:
        """Live workers: instance number -> pid."""
        found = {}
        for path in self.pid_dir.glob(f"spark-{self.ident}-{WORKER_CLASS}-*.pid"):
            instance = int(path.stem.rsplit("-", 1)[1])
            pid = _read_pid(path)
            if pid and _alive(pid, WORKER_CLASS):
                found[instance] = pid
            else:
                path.unlink(missing_ok=True)  # a worker that died is no node
        return found

    def _worker_port(self, instance: int) -> int:
        """The port this worker really listens on: Spark moves to the next port when the configured
        one is taken (by anything, even a client's ephemeral port), so its log has the last word."""
        for path in self.log_dir.glob(f"spark-{self.ident}-{WORKER_CLASS}-{instance}-*.out"):
            try:
                with path.open(errors="replace") as log:
                    head = log.read(256 * 1024)
            except OSError:
                continue
            found = _WORKER_PORT_LINE.search(head)
            if found:
                return int(found.group(1))
        return self.settings.worker_port_base + instance

    def _master_status(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.master_webui}/json/", timeout=2) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _daemon(self, action: str, cls: str, instances: Sequence[int], *args: str | Callable[[int], str]) -> None:
        """Run `spark-daemon.sh <action>` for these instances, concurrently (each start waits ~2 s)."""
        env = spark_process_env()
        env.update(
            SPARK_PID_DIR=str(self.pid_dir),
            SPARK_LOG_DIR=str(self.log_dir),
            SPARK_IDENT_STRING=self.ident,
            SPARK_WORKER_DIR=str(self.state_dir / "work"),
            SPARK_DAEMON_MEMORY=self.settings.daemon_memory,
            DPE_HOME=str(dpe_home()),  # marks the JVMs as ours (see spark_pids_of)
        )
        env.pop("SPARK_NO_DAEMONIZE", None)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        script = spark_home() / "sbin" / "spark-daemon.sh"
        # Own session: the JVMs must outlive whichever process asked for them (sensor, launcher)
        # and must not receive that process's signals; `shutdown` is how they stop.
        started = [
            (instance, subprocess.Popen(
                ["bash", str(script), action, cls, str(instance),
                 *(arg(instance) if callable(arg) else arg for arg in args)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            ))
            for instance in instances
        ]
        failures = []
        for instance, process in started:
            out, _ = process.communicate(timeout=60)
            if process.returncode != 0 or "failed to launch" in out:
                failures.append(f"{cls} {instance}: {out.strip()[-1000:]}")
        if failures:
            raise PoolError(f"pool {self.name}: spark-daemon.sh {action} failed: {'; '.join(failures)}")

    def _ensure_master(self) -> None:
        pid = _read_pid(self._pid_file(MASTER_CLASS, 1))
        if pid and _alive(pid, MASTER_CLASS):
            return
        self._daemon("start", MASTER_CLASS, [1], "--host", "127.0.0.1",
                     "--port", str(self.settings.master_port), "--webui-port", str(self.settings.master_webui_port))

    def _start_workers(self, instances: Sequence[int]) -> None:
        self._daemon(
            "start", WORKER_CLASS, instances,
            "--host", "127.0.0.1",
            "--cores", f"{max(1, int(self.config.node_cpus))}",
            "--memory", f"{max(1, int(self.config.node_memory_gb * 1024))}m",
            "--port", lambda i: str(self.settings.worker_port_base + i),
            "--webui-port", lambda i: str(self.settings.worker_webui_port_base + i),
            self.master_url,
        )

    def _stop(self, cls: str, instance: int, grace_s: float = 15.0) -> None:
        path = self._pid_file(cls, instance)
        pid = _read_pid(path)
        if not pid or not _alive(pid, cls):
            path.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid, cls) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid, cls):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, cls):
                time.sleep(0.1)
        path.unlink(missing_ok=True)
