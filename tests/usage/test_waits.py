"""How long runs waited for room, as a team checks whether its pool's wait holds: queued to running,
read from a real Dagster instance's run records, per pool and day, and shown by `dpe pools`."""

from __future__ import annotations

import json
import time

from dagster import DagsterEventType

from dpe_dagster.usage.waits import RunWait, RunWaits, p95, read_waits_since, waits_by_pool_day
from tests.reliability.harness import queue_run, report_run_event
from tests.support.aws import dagster  # noqa: F401  (fixture)


def test_the_p95_is_the_nearest_rank_and_days_are_utc():
    assert p95([]) is None and p95([7.0]) == 7.0
    assert p95(range(1, 101)) == 95 and p95(range(1, 21)) == 19
    day = 1_796_515_200.0  # 2026-12-06 00:00 UTC
    waits = [RunWait("a", "etl", day - 30, day - 10), RunWait("b", "etl", day + 5, day + 65),
             RunWait("c", "etl", day + 100, day + 110), RunWait("d", "gpu", day, day + 1)]
    shown = waits_by_pool_day(waits, {"etl": 30.0})
    assert [(d.pool, d.day, d.runs, d.p95_s, d.past_target, d.held) for d in shown] == [
        ("etl", "2026-12-05", 1, 20.0, 0, True), ("etl", "2026-12-06", 2, 60.0, 1, False),
        ("gpu", "2026-12-06", 1, 1.0, None, None)]


def test_a_run_with_its_own_wait_target_is_held_to_it_not_to_its_pool_s():
    day = 1_796_515_200.0  # 2026-12-06 00:00 UTC
    scheduled = [RunWait(f"s{i}", "etl", day + i, day + i + 5) for i in range(19)]
    backfill = RunWait("b", "etl", day, day + 900, target_s=1800.0)  # 15 minutes, within its 30
    [shown] = waits_by_pool_day([*scheduled, backfill], {"etl": 30.0})
    assert (shown.runs, shown.p95_s, shown.past_target, shown.held) == (20, 5.0, 0, True)
    late = RunWait("l", "etl", day, day + 120)  # the pool's 30 s
    urgent = RunWait("u", "etl", day, day + 20, target_s=10.0)  # within the pool's 30 s, not its own 10
    [shown] = waits_by_pool_day([*scheduled, backfill, late, urgent], {"etl": 30.0})
    assert (shown.runs, shown.p95_s, shown.past_target, shown.held) == (22, 120.0, 2, False)
    assert shown.as_json() == {"day": "2026-12-06", "pool": "etl", "runs": 22, "p95_s": 120.0, "wait_target_s": 30.0,
                               "past_target": 2, "held": False}


def test_a_run_s_wait_runs_from_queued_to_started_and_is_read_once(dagster):
    before = time.time() - 1
    slow = queue_run(dagster, "spot-etl", cpus=1)
    other = queue_run(dagster, "elsewhere", cpus=1)
    time.sleep(1.0)
    for run_id in (slow, other):
        report_run_event(dagster, run_id, DagsterEventType.RUN_START)
    reader = RunWaits(frozenset({"spot-etl"}))
    [wait] = reader.read(dagster)
    assert (wait.run_id, wait.pool, wait.target_s) == (slow, "spot-etl", None) and 1.0 <= wait.seconds < 10
    assert reader.read(dagster) == [], "each start is read once"
    fast = queue_run(dagster, "spot-etl", cpus=1)
    report_run_event(dagster, fast, DagsterEventType.RUN_START)
    [again] = reader.read(dagster)
    assert again.run_id == fast and again.seconds < wait.seconds
    assert {w.run_id for w in read_waits_since(dagster, before, ["spot-etl"])} == {slow, fast}
    assert read_waits_since(dagster, time.time() + 60) == []


def test_dpe_pools_shows_today_s_p95_wait_against_the_wait_target(dagster, tmp_path, monkeypatch):
    from dagster import DagsterRunStatus
    from typer.testing import CliRunner

    from dpe_dagster.cli import app
    from dpe_dagster.tags import pool_tags
    from tests.reliability.harness import new_run

    (tmp_path / "dagster.yaml").write_text("")  # the instance `dpe pools` reads (DAGSTER_HOME)
    config = tmp_path / "pools.yaml"
    config.write_text("pools:\n" + "".join(
        f"  {name}: {{provider: local, max_size: 1, node_cpus: 2, node_memory_gb: 2, price_per_node_hour: 0.02, "
        f"wait_target_s: {target}, settings: {{state_dir: {tmp_path / name}}}}}\n"
        for name, target in (("spot-etl", 1), ("backfill-etl", 1), ("idle-etl", 45))))
    monkeypatch.setenv("DPE_CONFIG", str(config))
    late = queue_run(dagster, "spot-etl", cpus=1)  # held to its pool's 1 s
    backfill = new_run(dagster, pool_tags("backfill-etl", cpus=1, wait_target_s=60), DagsterRunStatus.QUEUED).run_id
    time.sleep(1.2)
    for run_id in (late, backfill):
        report_run_event(dagster, run_id, DagsterEventType.RUN_START)
    result = CliRunner().invoke(app, ["pools", "--json"])
    assert result.exit_code == 0, result.output
    pools = {pool["pool"]: pool for pool in json.loads(result.output)}
    assert {name: pool["wait_target_s"] for name, pool in pools.items()} == {
        "spot-etl": 1, "backfill-etl": 1, "idle-etl": 45}
    spot, backfilled = pools["spot-etl"]["waits_today"], pools["backfill-etl"]["waits_today"]
    assert (spot["runs"], spot["past_target"], spot["held"]) == (1, 1, False) and spot["p95_s"] >= 1.2
    assert (backfilled["runs"], backfilled["past_target"], backfilled["held"]) == (1, 0, True), \
        "waited past its pool's 1 s, within its own 60 s"
    assert pools["idle-etl"]["waits_today"] is None
    table = CliRunner().invoke(app, ["pools"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    header = [[cell.strip() for cell in line.split("┃")] for line in table.output.splitlines() if line.startswith("┃")]
    assert [line[8:11] for line in header] == [["", "wait", ""], ["wait p95 today", "target", "last failure"]]
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in table.output.splitlines() if line.startswith("│")}
    assert rows["spot-etl"][7].startswith(f"{spot['p95_s']:.1f}s (1 run(s), 1 past target)")
    assert rows["spot-etl"][7].endswith("target missed") and rows["spot-etl"][8] == "1s"
    assert rows["backfill-etl"][7] == f"{backfilled['p95_s']:.1f}s (1 run(s))" and rows["backfill-etl"][8] == "1s"
    assert rows["idle-etl"][7:9] == ["-", "45s"]


def test_a_run_s_wait_target_tag_reaches_the_policy_s_demand(dagster, tmp_path):
    from dagster import DagsterRunStatus

    from dpe_dagster.config import parse_environment
    from dpe_dagster.scaling.demand import read_demand
    from dpe_dagster.tags import pool_tags
    from tests.reliability.harness import new_run

    env = parse_environment("t", {"pools": {"spot-etl": {
        "provider": "local", "max_size": 2, "node_cpus": 2, "node_memory_gb": 2, "price_per_node_hour": 0.02,
        "wait_target_s": 30, "settings": {"state_dir": str(tmp_path)}}}})
    backfill = new_run(dagster, pool_tags("spot-etl", cpus=1, wait_target_s=1800), DagsterRunStatus.QUEUED).run_id
    scheduled = new_run(dagster, pool_tags("spot-etl", cpus=1), DagsterRunStatus.QUEUED).run_id
    waits = {run.run_id: run.wait_target_s for run in read_demand(dagster, env).of("spot-etl")}
    assert waits == {backfill: 1800.0, scheduled: None}  # None: the pool's 30 s
