"""dpe in a Dagster project of its own, as the README's "Use dpe in your Dagster project" says:
build the wheel, install it with uv into a new project that has its own `resources.py` and
`assets.py`, configure one local pool in YAML, `dg check defs`, and run a job through a real
daemon: the pool scales up for it and back to zero, and the run's usage record is in the event log.

The project is `tests/adopt_project/`, copied to a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.local import free_port
from tests.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
PROJECT = PROJECT_ROOT / "tests" / "adopt_project"
# The uv `make test` used (it exports it), else the one on PATH, else python3's module.
UV = (os.environ.get("DPE_UV") or shutil.which("uv") or "python3 -m uv").split()


def run(args, *, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([*UV, "build", "--wheel", "--out-dir", str(out)], cwd=PROJECT_ROOT, env=dict(os.environ))
    (built,) = out.glob("dpe-*.whl")
    return built


def test_the_wheel_ships_only_dpe_dagster(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"dpe_dagster"}, top
    assert "dpe_dagster/pools/aws/on_demand_prices.csv" in names


@pytest.fixture(scope="module")
def project(wheel, tmp_path_factory):
    """The new project, installed: its own venv with the wheel (and the Spark extra), at the
    versions this repository's lock pins (so uv takes them from its cache)."""
    folder = tmp_path_factory.mktemp("team") / "team-pipelines"
    shutil.copytree(PROJECT, folder)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "DPE_ENV", "DPE_CONFIG")}
    pins = folder / "constraints.txt"
    pins.write_text(run([*UV, "export", "--locked", "--all-extras", "--no-hashes", "--no-emit-project",
                         "--format", "requirements-txt"], cwd=PROJECT_ROOT, env=env).stdout)
    run([*UV, "venv", "--python", sys.executable, str(folder / ".venv")], cwd=folder, env=env)
    python = folder / ".venv" / "bin" / "python"
    run([*UV, "pip", "install", "--python", str(python), "-c", str(pins), f"dpe[spark] @ {wheel.as_uri()}",
         "dagster-dg-cli"], cwd=folder, env=env)
    env.update(DAGSTER_HOME=str(folder / ".dagster"), DPE_HOME=str(folder / ".dpe"), TEAM_IDLE_TIMEOUT_S="5",
               TEAM_SPARK_PORT=str(free_port()), TEAM_SPARK_UI_PORT=str(free_port()), SPARK_LOCAL_IP="127.0.0.1",
               PATH=f"{folder / '.venv' / 'bin'}{os.pathsep}{env['PATH']}")
    Path(env["DAGSTER_HOME"]).mkdir()
    shutil.copy(folder / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    return folder, env


def test_dpe_is_imported_from_the_wheel_and_the_team_keeps_its_modules(project):
    folder, env = project
    probe = run([str(folder / ".venv" / "bin" / "python"), "-c",
                 "import dpe_dagster, assets, resources; print(dpe_dagster.__file__, assets.__file__, resources.__file__)"],
                cwd=folder, env=env).stdout.split()
    assert ".venv" in probe[0] and "site-packages" in probe[0]
    assert probe[1] == str(folder / "assets.py") and probe[2] == str(folder / "resources.py")


def test_the_pools_file_is_checked_as_the_readme_says(project):
    folder, env = project
    done = run([str(folder / ".venv" / "bin" / "dpe"), "schema", "--check", "pools.yaml"], cwd=folder, env=env)
    assert "pools.yaml: valid; pools: etl" in done.stdout


def test_dg_check_defs_passes(project):
    folder, env = project
    done = run([str(folder / ".venv" / "bin" / "dg"), "check", "defs"], cwd=folder, env=env)
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_a_job_scales_the_pool_up_and_back_to_zero_and_is_charged(project):
    folder, env = project
    bin_dir = folder / ".venv" / "bin"
    log = open(folder / "daemon.log", "wb")
    daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    probe = str(bin_dir / "python")
    try:
        run([str(bin_dir / "dagster"), "job", "launch", "-w", "workspace.yaml", "-j", "numbers_job"],
            cwd=folder, env=env, timeout=300)
        # What the user would look at: the run's status, the pool's nodes, the usage ledger.
        script = PROBE.replace("@HOME@", env["DAGSTER_HOME"])
        seen, deadline = [], time.monotonic() + 420
        while time.monotonic() < deadline:
            state = json.loads(run([probe, "-c", script], cwd=folder, env=env, timeout=120).stdout)
            state["records"] = json.loads(run([str(bin_dir / "dpe"), "usage", "--json"], cwd=folder, env=env,
                                              timeout=120).stdout or "[]")
            seen.append(state)
            if state["status"] in ("FAILURE", "CANCELED"):
                break
            if state["status"] == "SUCCESS" and state["nodes"] == 0 and state["records"]:
                break
            time.sleep(3)
        log.flush()
        daemon_log = (folder / "daemon.log").read_text()[-4000:]
        assert seen[-1]["status"] == "SUCCESS", (seen[-5:], daemon_log)
        assert max(s["nodes"] for s in seen) >= 1, "the pool never scaled up"
        assert seen[-1]["nodes"] == 0, ("the pool did not scale back to zero", seen[-5:], daemon_log)
        (record,) = seen[-1]["records"]
        assert record["pool"] == "etl" and record["job_name"] == "numbers_job" and record["status"] == "SUCCESS"
        assert record["node_seconds"] > 0 and record["cost_usd"] > 0 and "numbers" in record["assets"]
    finally:
        os.killpg(daemon.pid, 15)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, 9)
        subprocess.run([probe, "-c", STOP], cwd=folder, env=env, timeout=120)


PROBE = """
import json
from dagster import DagsterInstance
from dpe_dagster.environment import load_environment
from dpe_dagster.pools import open_pool
env = load_environment()
with DagsterInstance.from_config("@HOME@") as instance:
    runs = instance.get_runs(limit=1)
print(json.dumps({"status": runs[0].status.value if runs else None,
                  "nodes": len(open_pool(env.pool("etl"), env).nodes())}))
"""

# Whatever the test's end: no Spark process of the project's pool left running.
STOP = """
from dpe_dagster.environment import load_environment
from dpe_dagster.pools import open_pool
env = load_environment()
pool = open_pool(env.pool("etl"), env)
pool.set_target(0)
pool.shutdown()
"""
