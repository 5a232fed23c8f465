"""A node pool of Spark standalone workers on this machine: real processes, started and stopped.

The master starts with the first worker and stops with the last one. Each worker is one node; a
worker that holds executors (cores in use, as the master reports them) is busy and is never stopped.
The processes are the source of truth: the pool reads pid files and the master's JSON status, so any
process (the daemon, a sensor, the CLI) sees the same pool. Like an autoscaling group, the pool
holds its target: a worker that died (killed, out of memory) no longer counts toward it, so the
next plan starts a new one.

Daemons are started the way `spark-daemon.sh start` starts them (detached, `nohup`, a pid file, a
rotated `.out` log under the same names), without that script's fixed wait of 2-3 s per daemon to
see the JVM survive: a new worker is a pending node until it registers, as a booting instance is,
and its JVM starts once the master listens (the caller never waits for either). A pool brought up
for a run therefore comes up while the run's own process starts, instead of before it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from pydantic import Field

from dpe_dagster.config import Checked, ConfigModel, Number, PoolConfig, validated
from dpe_dagster.spark.java import spark_home, spark_process_env
from dpe_dagster.paths import dpe_home
from dpe_dagster.pools.base import PENDING, RUNNING, Node, PoolError
from dpe_dagster.pools.removal import SafeRemoval
from dpe_dagster.pools.local.daemon_exec import _listening
from dpe_dagster.spark.resource import run_id_of_app

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

Port = Number(ge=1024, le=65000, integer=True, what="a port number")
HeapSize = Checked(str, lambda value: isinstance(value, str) and re.fullmatch(r"[1-9][0-9]*[kmgKMG]?", value),
                   "a JVM heap size such as 512m or 1g", pattern=r"^[1-9][0-9]*[kmgKMG]?$")


class LocalSparkSettings(ConfigModel):
    """`pools.<name>.settings` for provider `local`."""

    master_port: Port = 7077
    master_webui_port: Port = 8080
    worker_port_base: Port = Field(7100, description="worker i listens on this port + i")
    worker_webui_port_base: Port = 8100
    state_dir: Optional[Path] = Field(None, description="pid files and logs (default: DPE_HOME/pools/<pool>)")
    daemon_memory: HeapSize = Field("512m", description="heap of the master and worker daemons")

    @classmethod
    def parse(cls, pool_name: str, raw: dict) -> "LocalSparkSettings":
        return validated(cls, raw, ("pools", pool_name, "settings"))


def _alive(pid: int, expected_class: str) -> bool:
    # A recycled pid belongs to another program: check it is still our JVM. A process in the middle
    # of an exec (launch helper -> spark-class -> java, just after a start) briefly shows no command line;
    # a kernel thread never shows one. A daemon this process started and that ended is reaped
    # first (a zombie shows no command line either).
    _reap()
    for _ in range(5):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        if cmdline:
            return expected_class in cmdline
        time.sleep(0.01)
    return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _rotate(log: Path, keep: int = 5) -> None:
    """Keep the last `keep` logs of a daemon as log.1 .. log.N (as spark-daemon.sh does), so a
    new worker's log never shows an old worker's lines."""
    if not log.exists():
        return
    for n in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{n + 1}"))
    log.replace(log.with_name(f"{log.name}.1"))


# Started (by path, with this interpreter) as a daemon's process: waits for the master if asked,
# then becomes the daemon (exec keeps the pid that the pool recorded).
_DAEMON_EXEC = Path(__file__).with_name("daemon_exec.py")
# Daemons this process started: they are its children (detached in their own session, but not
# re-parented), so each one that ends is reaped here rather than left a zombie while a long-lived
# caller (the code server running the sensor, the daemon) lives on.
_STARTED: list[subprocess.Popen] = []


def _reap() -> None:
    _STARTED[:] = [process for process in _STARTED if process.poll() is None]


_WORKER_PORT_LINE = re.compile(r"Successfully started service 'sparkWorker' on port (\d+)")


class LocalSparkPool(SafeRemoval):
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
        """The workers asked for, less any that died since: a dead worker is replaced by the next
        scale-up, as an autoscaling group replaces a lost instance."""
        try:
            wanted = int((self.state_dir / "target").read_text())
        except (OSError, ValueError):
            return 0
        return min(wanted, len(self._worker_instances()))

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
                    # Unknown (no master to ask) counts as busy, and says so: the policy keeps such a
                    # worker only for a bounded grace, and stops it then (see `remove_nodes`).
                    busy=bool(registered.get("coresused", 1)) if registered else status is None,
                    busy_known=status is not None,
                    lifecycle=self.config.lifecycle,
                    instance_type=f"local-{self.config.node_cpus:g}cpu-{self.config.node_memory_gb:g}g",
                )
            )
        return nodes

    def run_nodes(self) -> dict[str, str]:
        """From Spark itself: the master lists the active applications (a run's session is named
        after its run id, see `dpe_dagster.spark.run_app_name`) and the workers; each worker
        that has cores in use lists its executors by application. A run's executors may span
        workers: it maps to the worker holding most of its cores (ties: the lowest node id).
        Idle workers are not asked, so a tick costs one master read plus one per busy worker."""
        status = self._master_status()
        if not status:
            return {}
        runs_by_app = {app.get("id"): run_id_of_app(app.get("name", "")) for app in status.get("activeapps", [])}
        node_by_port = {self._worker_port(instance): self._node_id(instance) for instance in self._worker_instances()}
        cores: dict[str, dict[str, int]] = {}  # run id -> node id -> cores its executors hold there
        for worker in status.get("workers", []):
            node_id = node_by_port.get(worker.get("port"))
            if node_id is None or worker.get("state") != "ALIVE" or not worker.get("coresused"):
                continue
            for executor in self._worker_status(worker.get("webuiaddress", "")).get("executors", []):
                run_id = runs_by_app.get(executor.get("appid"))
                if run_id:
                    held = cores.setdefault(run_id, {})
                    held[node_id] = held.get(node_id, 0) + int(executor.get("cores", 0))
        return {run_id: min(held, key=lambda node_id: (-held[node_id], node_id)) for run_id, held in cores.items()}

    # -- removal: the primitives of pools/removal.py's sequence ----------------------------------
    def removal_members(self) -> tuple[list[str], int, int]:
        return [self._node_id(instance) for instance in self._worker_instances()], self.target(), 0

    def busy_now(self, node_ids: Sequence[str]) -> dict[str, bool | None]:
        # From the master at the last moment; with no master to ask, a worker's status is unknown.
        return {n.id: n.busy if n.busy_known else None for n in self.nodes() if n.id in set(node_ids)}

    def terminate(self, node_id: str, lower_target: bool) -> None:
        target = self.target()  # counts live workers: read before this one stops
        self._stop(WORKER_CLASS, self._instance_of(node_id))
        self._write_target(max(0, target - 1) if lower_target else target)
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

    @staticmethod
    def _worker_status(webui: str) -> dict:
        """A worker's own JSON status (its executors); empty when it cannot be read (a worker
        stopping): its runs then hold no node this tick, and the next tick sees them again."""
        if not webui.startswith("http://"):
            return {}
        try:
            with urllib.request.urlopen(f"{webui.rstrip('/')}/json/", timeout=2) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def _log(self, cls: str, instance: int) -> Path:
        return self.log_dir / f"spark-{self.ident}-{cls}-{instance}-{socket.gethostname()}.out"

    def _launch(self, cls: str, instance: int, args: Sequence[str], after_port: int | None = None,
                wait_s: float = 0.0) -> int:
        """Start one Spark daemon JVM detached from the caller, as `spark-daemon.sh start` does:
        the JVMs must outlive whichever process asked for them (sensor, launcher, CLI) and must not
        receive its signals (a session of their own, hang-ups ignored); `_stop` and `shutdown` are
        how they stop. Returns its pid at once. No shell: the process is an argument vector, its
        output goes to the daemon's log from here, its pid file is written from here.
        `after_port`: the JVM starts only once something listens there (at most `wait_s` seconds,
        else the process exits and says so in its log); until then the pid is dpe's small launch
        helper (daemon_exec.py), whose command line already names the class, so the pool counts it
        as starting."""
        _reap()
        env = spark_process_env()
        env.update(
            SPARK_WORKER_DIR=str(self.state_dir / "work"),
            SPARK_DAEMON_MEMORY=self.settings.daemon_memory,
            SPARK_PRINT_LAUNCH_COMMAND="1",
            DPE_HOME=str(dpe_home()),  # marks the JVMs as ours (see spark.java.spark_pids_of)
        )
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _rotate(self._log(cls, instance))
        command = [str(spark_home() / "bin" / "spark-class"), cls, *args]
        helper = [sys.executable, str(_DAEMON_EXEC), str(after_port or ""), str(int(math.ceil(wait_s)))]
        try:
            with open(self._log(cls, instance), "ab") as log:
                process = subprocess.Popen([*helper, *command], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            raise PoolError(f"pool {self.name}: could not start {cls} {instance}: {error}") from None
        _STARTED.append(process)
        self._pid_file(cls, instance).write_text(f"{process.pid}\n")
        return process.pid

    def _ensure_master(self) -> None:
        pid = _read_pid(self._pid_file(MASTER_CLASS, 1))
        if pid and _alive(pid, MASTER_CLASS):
            return
        if _listening(self.settings.master_port):
            raise PoolError(f"pool {self.name}: port {self.settings.master_port} (settings.master_port) is taken "
                            "by another program; choose a free port for the Spark master")
        self._launch(MASTER_CLASS, 1, ["--host", "127.0.0.1", "--port", str(self.settings.master_port),
                                       "--webui-port", str(self.settings.master_webui_port)])

    def _start_workers(self, instances: Sequence[int]) -> None:
        """Start workers and return at once: each is a pending node until it registers. A worker's
        JVM starts once the master listens (a worker that finds no master waits 5-15 s to retry)."""
        for instance in instances:
            self._launch(WORKER_CLASS, instance, [
                "--host", "127.0.0.1",
                "--cores", f"{max(1, int(self.config.node_cpus))}",
                "--memory", f"{max(1, int(self.config.node_memory_gb * 1024))}m",
                "--port", str(self.settings.worker_port_base + instance),
                "--webui-port", str(self.settings.worker_webui_port_base + instance),
                self.master_url,
            ], after_port=self.settings.master_port, wait_s=max(self.config.boot_timeout_s, 10.0))

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
