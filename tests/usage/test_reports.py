"""Reports from the ledger: the CLI's groupings, the `platform_usage` asset, and their agreement."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import Definitions, asset, build_sensor_context, instance_for_test, materialize

from dpe_dagster.config import parse_environment
from dpe_dagster.scaling.cursor import read_busy_seconds
from dpe_dagster.tags import TEAM_TAG, pool_tags
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.platform_report import build_platform_usage
from dpe_dagster.usage.records import NodeLifetime
from dpe_dagster.usage.sensor import build_ledger_sensor
from tests.support.postgres import postgres_or_skip

ENV = parse_environment("local", {"pools": {"spot-etl": {
    "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.36,
    "default_run_cpus": 1, "default_run_memory_gb": 2,
}}})


@asset(owners=["team:analytics"])
def sales():
    time.sleep(0.3)
    return 1


@asset(owners=["team:analytics"])
def margins(sales):
    time.sleep(0.1)
    return sales


@asset
def forecast():
    time.sleep(0.2)
    return 2


DEFS = Definitions(assets=[sales, margins, forecast])


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_home(request, tmp_path):
    """A Dagster instance on disk (so the CLI can open it) holding a few runs and their usage."""
    home = tmp_path / "dagster"
    home.mkdir()
    overrides = {}
    if request.param == "postgres":
        overrides["storage"] = {"postgres": {"postgres_url": postgres_or_skip()}}
    with instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
        if request.param == "postgres":
            instance.wipe()
        t0 = time.time()
        materialize([sales, margins], instance=instance, tags=pool_tags("spot-etl", cpus=1))
        materialize([forecast], instance=instance, tags={**pool_tags("spot-etl", cpus=2), TEAM_TAG: "finance"})
        materialize([sales, margins], instance=instance, tags=pool_tags("spot-etl", cpus=1))
        for i in (1, 2):
            record_node_lifetime(instance, NodeLifetime(f"node-{i}", "spot-etl", "spot", "local", t0 - 30,
                                                        time.time() + 30, 10, 0.36))
        context = build_sensor_context(instance=instance, repository_def=DEFS.get_repository_def())
        build_ledger_sensor(ENV)(context)
        yield home, instance
        if request.param == "postgres":
            instance.wipe()


def table_rows(markdown: str) -> list[dict[str, str]]:
    """A markdown table of the asset page as rows of its cells, by column."""
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()]
    return [dict(zip(header, row)) for row in rows]


def dpe_usage(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dpe"), "usage", *args], capture_output=True, text=True,
                          env=dict(os.environ, DAGSTER_HOME=str(home)), timeout=120)


def test_platform_usage_and_the_cli_agree_to_the_cent(ledger_home):
    home, instance = ledger_home
    result = materialize([build_platform_usage(ENV, read_busy_seconds)], instance=instance)
    metadata = result.asset_materializations_for_node("dpe__platform_usage")[0].metadata
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    cli = dpe_usage(home, "--by", "asset", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    from_cli = {(r["asset"], r["team"]): r["cost_usd"] for r in json.loads(cli.stdout)}
    from_asset = {(r["asset"], r["team"]): r["cost_usd"] for r in metadata["assets"].value}
    assert from_cli.keys() == from_asset.keys() and len(from_cli) == 3
    assert all(abs(from_cli[k] - from_asset[k]) < 0.005 for k in from_cli), (from_cli, from_asset)
    assert {team for _, team in from_cli} == {"analytics", "finance"}

    report = json.loads(Path(metadata["report"].value).read_text())
    paid, attributed, idle = (report[k] for k in ("paid_usd", "attributed_usd", "idle_usd"))
    assert paid == pytest.approx(attributed + idle, abs=1e-9) and attributed > 0 and idle > 0
    # the asset page shows the report's figures to a millionth of a dollar
    assert [metadata[k].value for k in ("paid_usd", "attributed_usd", "idle_usd")] \
        == [round(v, 6) for v in (paid, attributed, idle)]
    assert metadata["always_on_usd"].value >= paid - 1e-9, "an always-on cluster at the same peak never costs less"
    chart = Path(metadata["chart"].value)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5_000
    # Today's three runs waited for room well within the pool's default 10 s target.
    [waits] = table_rows(metadata["waits"].value)
    assert {k: waits[k] for k in ("day", "pool", "runs", "wait target", "past target", "held")} == {
        "day": time.strftime("%Y-%m-%d", time.gmtime()), "pool": "spot-etl", "runs": "3", "wait target": "10s",
        "past target": "0", "held": "yes"}
    [saved] = report["waits"]
    assert (saved["runs"], saved["wait_target_s"], saved["held"]) == (3, 10.0, True) and saved["p95_s"] < 10
    assert waits["p95 wait"] == f"{saved['p95_s']:.1f}s"


def test_platform_usage_shows_a_wait_past_the_pool_s_target_as_not_held(sqlite_instance):
    from dagster import DagsterEventType

    from tests.reliability.harness import queue_run, report_run_event

    env = parse_environment("local", {"pools": {"spot-etl": {
        "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 0.36,
        "wait_target_s": 1}}})
    late = queue_run(sqlite_instance, "spot-etl", cpus=1)
    retired = queue_run(sqlite_instance, "retired-etl", cpus=1)  # a pool no longer configured: no target
    time.sleep(1.2)
    for run_id in (late, retired):
        report_run_event(sqlite_instance, run_id, DagsterEventType.RUN_START)
    result = materialize([build_platform_usage(env, read_busy_seconds)], instance=sqlite_instance)
    metadata = result.asset_materializations_for_node("dpe__platform_usage")[0].metadata
    rows = {row["pool"]: row for row in table_rows(metadata["waits"].value)}
    assert {k: rows["spot-etl"][k] for k in ("runs", "wait target", "past target", "held")} == {
        "runs": "1", "wait target": "1s", "past target": "1", "held": "no"}
    assert float(rows["spot-etl"]["p95 wait"].removesuffix("s")) >= 1.2
    assert {k: rows["retired-etl"][k] for k in ("runs", "wait target", "past target", "held")} == {
        "runs": "1", "wait target": "-", "past target": "-", "held": "-"}
    report = json.loads(Path(metadata["report"].value).read_text())
    assert {(w["pool"], w["wait_target_s"], w["past_target"], w["held"]) for w in report["waits"]} == {
        ("spot-etl", 1.0, 1, False), ("retired-etl", None, None, None)}


def test_groupings_add_up(ledger_home):
    home, _ = ledger_home
    runs = json.loads(dpe_usage(home, "--by", "run", "--json").stdout)
    assert len(runs) == 3 and all(r["price_source"] == "config" for r in runs)
    total = sum(r["cost_usd"] for r in runs)
    for by in ("asset", "team"):
        rows = json.loads(dpe_usage(home, "--by", by, "--format", "json").stdout)
        assert sum(r["cost_usd"] for r in rows) == pytest.approx(total)
    teams = {r["team"]: r for r in json.loads(dpe_usage(home, "--by", "team", "--format", "json").stdout)}
    assert teams["analytics"]["runs"] == 2 and teams["finance"]["runs"] == 1
    (pool,) = json.loads(dpe_usage(home, "--by", "pool", "--format", "json").stdout)
    assert pool["attributed_usd"] == pytest.approx(total, abs=0.005)
    assert pool["paid_usd"] == pytest.approx(pool["attributed_usd"] + pool["idle_usd"], abs=1e-9)
    days = json.loads(dpe_usage(home, "--by", "day", "--format", "json").stdout)
    assert sum(d["runs"] for d in days) == 3
    rows = list(csv.DictReader(io.StringIO(dpe_usage(home, "--by", "pool", "--format", "csv").stdout)))
    assert rows[0]["pool"] == "spot-etl"
    assert json.loads(dpe_usage(home, "--json", "--since", "2999-01-01").stdout) == []


@pytest.mark.parametrize("args, message", [
    (["--by", "colour"], "--by: must be one of run, asset, pool, team, day; got 'colour'"),
    (["--format", "xml"], "--format: must be one of table, json, csv; got 'xml'"),
    (["--since", "last week"], "--since: must be an ISO date or date-time"),
])
def test_bad_report_arguments_are_named(tmp_path, args, message):
    home = tmp_path / "dagster"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)):
        result = dpe_usage(home, *args)
    assert result.returncode == 2 and message in " ".join(result.stderr.split())


def test_node_lifetimes_and_the_nodes_each_run_used_are_listed_as_json_and_csv(ledger_home):
    home, instance = ledger_home
    nodes = json.loads(dpe_usage(home, "--nodes", "--json").stdout)
    assert sorted(n["node_id"] for n in nodes) == ["node-1", "node-2"]
    for n in nodes:
        assert n["pool"] == "spot-etl" and n["lifecycle"] == "spot"
        assert n["paid_usd"] == pytest.approx(n["lifetime_seconds"] / 3600 * n["price_per_node_hour"])
        assert n["lifetime_seconds"] == pytest.approx(n["busy_seconds"] + n["idle_seconds"])
    rows = list(csv.DictReader(io.StringIO(dpe_usage(home, "--nodes", "--format", "csv").stdout)))
    assert sorted(r["node_id"] for r in rows) == ["node-1", "node-2"]
    assert float(rows[0]["paid_usd"]) == pytest.approx(next(n for n in nodes if n["node_id"] == rows[0]["node_id"])["paid_usd"])

    # Each run names the nodes it ran on: both nodes were alive all along.
    for run in json.loads(dpe_usage(home, "--by", "run", "--json").stdout):
        assert sorted(n["node_id"] for n in run["nodes"]) == ["node-1", "node-2"]
        assert all(set(n) == {"node_id", "instance_type", "lifecycle", "zone"} for n in run["nodes"])
        assert {n["lifecycle"] for n in run["nodes"]} == {"spot"}
