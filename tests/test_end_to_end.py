"""The whole cycle, daemon-driven, on a temporary instance: what a new user sees from `make demo`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from dpe_dagster.daemon import dagster_bin, start_daemon, start_dagster_process, stop_process_group
from dpe_dagster.instance import write_instance
from dpe_dagster.spark.java import spark_pids_of
from resources import repository_environment
from tests.support.cli import dpe, fresh_environment
from tests.support.local import free_port
from tests.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
# Kept after the run (git-ignored): what the browser saw.
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    env = fresh_environment(tmp_path)
    for key in ("DPE_HOME", "DAGSTER_HOME", "DPE_IDLE_TIMEOUT_S", "DPE_ENV"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`dpe demo` once, on a fresh instance; the tests below look at what it left."""
    env = fresh_environment(tmp_path_factory.mktemp("demo"))
    return env, dpe("demo", env=env)


def test_demo_runs_the_cycle_and_leaves_nothing_behind(demo):
    isolated, demo = demo
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "scaling up for the queued run" in demo.stdout and "scaling down after the idle timeout" in demo.stdout
    assert spark_pids_of(Path(isolated["DPE_HOME"])) == set(), "the demo left Spark processes running"
    # the report it ends with lists the node it paid for (the sensor records it after removing it)
    assert "spot-etl-worker-1" in demo.stdout.split("node lifetimes")[-1]

    usage = dpe("usage", "--json", env=isolated)
    assert usage.returncode == 0, usage.stderr
    records = json.loads(usage.stdout)
    assert len(records) == 1
    record = records[0]
    assert record["status"] == "SUCCESS" and record["pool"] == "spot-etl" and record["job_name"] == "tpch"
    assert record["node_seconds"] > 0 and record["cost_usd"] > 0 and record["price_per_node_hour"] > 0
    assert record["started_at"] < record["ended_at"]
    assert {"tpch_q1", "tpch_q3", "tpch_q5", "tpch_q6"} <= set(record["assets"])
    assert record["run_id"][:8] in demo.stdout

    with DagsterInstance.from_config(isolated["DAGSTER_HOME"]) as instance:
        checks = instance.get_records_for_run(record["run_id"], of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in checks.records]
        assert len(evaluations) == 4 and all(e.passed for e in evaluations), evaluations


def test_a_run_with_bad_tags_fails_with_a_clear_message_and_scales_nothing(isolated, tmp_path):
    env = repository_environment("local")
    home = Path(isolated["DAGSTER_HOME"])
    write_instance(home, env)
    daemon = start_daemon(home, tmp_path / "daemon.log")
    try:
        run_id = str(uuid.uuid4())
        launched = subprocess.run(
            [dagster_bin("dagster"), "job", "launch", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-j", "tpch",
             "--run-id", run_id, "--tags", json.dumps({"dpe/cpu": "lots"})],
            env=isolated, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
        )
        assert launched.returncode == 0, launched.stderr
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 120
            while instance.get_run_by_id(run_id).status != DagsterRunStatus.FAILURE:
                assert time.monotonic() < deadline, f"run is {instance.get_run_by_id(run_id).status}"
                time.sleep(1)
            failures = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
            message = failures[0].event_log_entry.dagster_event.message
        assert "tag dpe/cpu: must be a number of CPUs" in message and "'lots'" in message
        assert spark_pids_of(Path(isolated["DPE_HOME"])) == set(), "nothing may be scaled for an unplaceable run"
    finally:
        stop_process_group(daemon)


def shown_value(dom: str, label: str) -> str:
    """The text of the metadata table's cell beside `label` in a page's DOM."""
    text = re.sub(r"\s*(<[^>]*>\s*)+", "|", dom)
    match = re.search(rf"\|{re.escape(label)}\|([^|]+)\|", text)
    assert match, f"{label} is not shown"
    return match.group(1)


def test_the_ui_shows_cost_on_the_asset_page(demo, tmp_path):
    """A real browser on the Dagster UI: the query asset's page shows its cost metadata, and the
    run's usage record shows its times as dates and its cost to a millionth of a dollar."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        message = "headless Chromium is not installed (apt-get install chromium)"
        if os.environ.get("DPE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; DPE_REQUIRE_BROWSER=1 makes this test mandatory")
        pytest.skip(message)
    env, result = demo
    assert result.returncode == 0, result.stderr
    port = free_port()
    webserver = start_dagster_process(
        [dagster_bin("dagster-webserver"), "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(port)], Path(env["DAGSTER_HOME"]), tmp_path / "webserver.log",
        extra_env={"DPE_HOME": env["DPE_HOME"]})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "webserver.log").read_text()[-3000:]
                time.sleep(1)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--lang=en-US",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000",
                 "--window-size=1400,1000"]
        browser_env = dict(os.environ, TZ="UTC")  # the UI shows times in the browser's zone
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pages = {}
        for name, path in (("asset_page_cost", "assets/tpch_q1"), ("run_usage_page", "assets/dpe/run_usage")):
            url = f"http://127.0.0.1:{port}/{path}?view=events"
            screenshot = ARTIFACTS / f"{name}.png"
            subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url], env=browser_env,
                           capture_output=True, timeout=120)
            pages[name] = subprocess.run([chromium, *flags, "--dump-dom", url], env=browser_env, capture_output=True,
                                         text=True, timeout=120).stdout
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    finally:
        stop_process_group(webserver)
    asset_page = pages["asset_page_cost"]
    assert "dpe/cost_usd" in asset_page and "dpe/node_seconds" in asset_page, \
        "the asset page must show its cost metadata"
    assert re.fullmatch(r"0\.\d{1,6}", shown_value(asset_page, "dpe/cost_usd"))
    assert re.fullmatch(r"\d+(\.\d)?", shown_value(asset_page, "dpe/node_seconds"))

    (record,) = json.loads(dpe("usage", "--json", env=env).stdout)
    run_page = pages["run_usage_page"]
    assert float(shown_value(run_page, "cost_usd")) == round(record["cost_usd"], 6) > 0
    assert float(shown_value(run_page, "node_seconds")) == round(record["node_seconds"], 1)
    for name in ("started_at", "ended_at"):
        at = datetime.fromisoformat(record[name])
        assert shown_value(run_page, name) == f"{at:%b} {at.day}, {at.hour % 12 or 12}:{at:%M:%S %p} UTC"
        assert str(int(at.timestamp())) not in run_page, f"{name} must show as a date, not as unix seconds"


def test_aws_sim_demo_ends_with_every_group_at_its_minimum(tmp_path):
    """The same cycle on the aws_asg provider against an AWS API emulator that the demo starts and stops."""
    env = {**fresh_environment(tmp_path), "DPE_ENV": "aws-sim"}
    result = dpe("demo", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "environment aws-sim" in out and "scaling down after the idle timeout" in out
    assert "spot-etl: 0 node(s)" in out and "ondemand-etl: 0 node(s)" in out
    # The report shows the instance types and lifecycles the ledger saw.
    assert re.search(r"\b(m6i|m5|m5a|m6a|m7i)\.large\b", result.stdout) and "spot" in result.stdout
    usage = json.loads(dpe("usage", "--json", env=env).stdout)
    assert len(usage) == 1 and usage[0]["status"] == "SUCCESS" and usage[0]["cost_usd"] > 0
