"""What `dagster dev -w workspace.yaml` shows: the pipeline, its job and schedule, dpe's sensors."""

from __future__ import annotations

import subprocess

from dagster import DefaultScheduleStatus, DefaultSensorStatus

from assets.definitions import defs
from dpe_dagster.daemon import dagster_bin
from tests.paths import PROJECT_ROOT


def test_workspace_loads_with_the_dagster_cli():
    result = subprocess.run([dagster_bin("dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dg_check_defs_passes_on_this_repository():
    result = subprocess.run([dagster_bin("dg"), "check", "defs"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "All definitions loaded successfully" in result.stdout + result.stderr, (
        result.stdout + result.stderr)


def test_pipeline_job_schedule_and_sensors_are_defined():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"tpch_tables", "tpch_q1", "tpch_q3", "tpch_q5", "tpch_q6", "dpe/run_usage", "dpe/node_usage"} <= keys
    job = defs.resolve_job_def("tpch")
    assert job.tags["dpe/node_pool"] == "spot-etl"
    assert job.executor_def.name == "in_process", "a run's steps must share one Spark session"
    schedule = defs.resolve_schedule_def("tpch_daily")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    for name in ("dpe_autoscaler", "dpe_usage_ledger"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING
    checks = {c.name for c in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {"q1_matches_duckdb", "q3_matches_duckdb", "q5_matches_duckdb", "q6_matches_duckdb", "has_words",
                      "paid_is_attributed_plus_idle", "pools_sized"}


def test_query_assets_name_only_their_pool():
    for key in ("tpch_q1", "tpch_q3", "tpch_q5", "tpch_q6"):
        spec = next(s for s in defs.resolve_all_asset_specs() if s.key.to_user_string() == key)
        assert {k: v for k, v in spec.tags.items() if k.startswith("dpe/")} == {"dpe/node_pool": "spot-etl"}
