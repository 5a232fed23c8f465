"""The benchmarks under bench/ still run (tiny configurations, `--quick` or smaller). Nothing here
asserts a timing: speed is measured only by the benchmarks themselves, against a baseline taken in
the same session (see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("script", ["latency.py", "tick_cost.py", "run_path.py", "airflow_peer.py", "plain_tpch.py",
                                    "spark_shapes.py", "metrics_scrape.py"])
def test_bad_flags_are_refused_with_a_message(script):
    required = ["--scale-factor", "1", "--data-root", "x"] if script == "plain_tpch.py" else []
    result = run(script, *required, "--no-such-flag", timeout=60)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


def test_flag_values_are_checked():
    assert "--runs: must be at least 2" in run("latency.py", "--runs", "1", timeout=60).stderr
    assert "--paths: unknown phase" in run("latency.py", "--paths", "nope", timeout=60).stderr
    assert "--storages: allowed values" in run("tick_cost.py", "--storages", "mysql", timeout=60).stderr
    assert "--scale-factors: each must be" in run("run_path.py", "--scale-factors", "0", timeout=60).stderr
    assert "--scale-factors: must be comma-separated numbers" in run("spark_shapes.py", "--scale-factors", "a",
                                                                     timeout=60).stderr
    assert "--shapes: 2y1 is not WORKERSxCORES" in run("spark_shapes.py", "--shapes", "2y1", timeout=60).stderr
    assert "--steps: unknown step" in run("plain_tpch.py", "--scale-factor", "1", "--data-root", "x", "--steps", "q2",
                                          timeout=60).stderr
    assert "--pools: must be at least 1" in run("metrics_scrape.py", "--pools", "0", timeout=60).stderr
    assert "--storages: allowed values" in run("metrics_scrape.py", "--storages", "mysql", timeout=60).stderr


def test_tick_cost_tiny(tmp_path):
    out = tmp_path / "tick"
    result = run("tick_cost.py", "--pools", "2", "--runs", "10,30", "--storages", "sqlite", "--ticks", "1",
                 "--active", "2", "--per-pool-max-pools", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "tick_cost.json").read_text())
    assert [(r["runs"], r["pools"], r["variant"]) for r in report["results"]] == [
        (10, 2, "per-pool"), (10, 2, "batched"), (30, 2, "per-pool"), (30, 2, "batched")]
    assert [(r["runs"], r["pools"]) for r in report["batched_vs_per_pool"]] == [(10, 2), (30, 2)]
    assert all(r["active_seen"] == 2 for r in report["results"])
    assert (out / "tick_cost.png").stat().st_size > 0
    # Nodes up and busy: each pool's instances are described and, when a node turns idle or busy,
    # its protection is changed, in the tick that is timed.
    [busy] = report["busy"]
    assert busy["pools"] == 2 and busy["busy_nodes"] >= 2
    assert busy["steady_calls"]["DescribeInstances"] >= 2 and "SetInstanceProtection" not in busy["steady_calls"]
    assert busy["churn_calls"]["SetInstanceProtection"] == 2
    # The ledger sensor: one read per kind of run-finished event and one of node lifetimes per
    # tick, whatever the number of pools (it used to read them again for every pool).
    from dpe_dagster.usage.sensor import ENDED_EVENTS

    [ledger] = report["ledger"]
    assert ledger["pools"] == 2 and ledger["queries_per_tick"] == len(ENDED_EVENTS) + 1
    assert ledger["per_pool_over_one_query"] == ledger["ledger_tick_s"] / ledger["one_query_s"]


def test_tick_cost_refuses_an_unknown_scenario():
    result = run("tick_cost.py", "--scenarios", "grid,nope", timeout=60)
    assert result.returncode == 2 and "--scenarios: allowed values are grid, busy, ledger" in result.stderr


def test_metrics_scrape_tiny(tmp_path):
    # More asset names than --max-names, and new ones between scrapes: the exporter names the first
    # five and counts the rest under `other`, scrape after scrape.
    out = tmp_path / "scrape"
    result = run("metrics_scrape.py", "--pools", "2", "--runs", "30", "--nodes", "5", "--assets", "20", "--teams", "3",
                 "--max-names", "5", "--active", "2", "--waiting", "1", "--new", "2", "--scrapes", "1",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics_scrape.json").read_text())
    [r] = report["results"]
    assert r["storage"] == "sqlite" and r["pools"] == 2
    assert r["history"]["runs"] == 30 and r["history"]["usage_records"] == 30 and r["history"]["node_lifetimes"] == 5
    assert r["new_runs_written"] == 4 and r["runs_read_by_last_scrape"] == 34
    for key in ("cold_scrape_s", "steady_scrape_s", "tick_s", "steady_over_tick", "cold_over_tick"):
        assert r[key] > 0
    assert len(r["cold_scrapes_s"]) == len(r["steady_scrapes_s"]) == len(r["ticks_s"]) == 1
    assert r["goal_met"] == (r["steady_scrape_s"] <= r["tick_s"])
    assert r["bounded"] and r["team_labels"] == 3 and r["asset_labels"] == 6 and r["other_asset"]
    assert r["ledger_series_stable"] and r["series"] > 0
    assert r["autoscaler_pools_seen"] == 2 and r["waiting_runs_seen"] == 1
    assert "steady scrape <= tick:" in result.stdout


def test_latency_proxy_records_the_scale_up_call():
    """The latency benchmark's probe: a call through the recording proxy reaches the emulator and is
    timed on arrival. (The full benchmark needs a daemon and minutes: `bench/latency.py --quick`.)"""
    import boto3

    sys.path.insert(0, str(ROOT))
    from bench.latency import Recorder, start_proxy
    from dpe_dagster.pools.aws.emulator import emulated_aws
    from resources import repository_environment

    env = repository_environment("aws-sim")
    with emulated_aws(env) as aws:
        recorder = Recorder(aws.url)
        server, url = start_proxy(recorder)
        try:
            client = boto3.client("autoscaling", endpoint_url=url, region_name=aws.region)
            group = env.pools["spot-etl"].settings["group_name"]
            client.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=1)
            call = recorder.wait_for("SetDesiredCapacity", 0, 10)
            assert call.params["AutoScalingGroupName"] == group and call.params["DesiredCapacity"] == "1"
            described = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
            assert described["AutoScalingGroups"][0]["DesiredCapacity"] == 1
        finally:
            server.shutdown()


def test_plain_tpch_tables_step(tmp_path):
    # The tables step alone (no Spark): the plain script imports the asset code and runs an asset body.
    result = run("plain_tpch.py", "--scale-factor", "0.001", "--data-root", str(tmp_path), "--steps", "tables")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tables" in json.loads(result.stdout.strip().splitlines()[-1])["steps"]
    assert (tmp_path / "sf0.001" / "tables" / "lineitem.parquet").exists()
