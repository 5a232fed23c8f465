"""Starting and stopping Dagster's own processes (daemon, webserver) for dpe's commands and tests.

Each runs in its own session so that stopping it stops its whole process group (the daemon's code
servers and run workers included): nothing it started is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpe_dagster.paths import project_root


def dagster_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def start_dagster_process(args: list[str], dagster_home: Path, log_path: Path,
                          extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), **(extra_env or {}))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    return subprocess.Popen(args, cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def start_daemon(dagster_home: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return start_dagster_process(
        [dagster_bin("dagster-daemon"), "run", "-w", str(project_root() / "workspace.yaml")],
        dagster_home, log_path, extra_env,
    )


def stop_process_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # children may outlive a dead leader
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
