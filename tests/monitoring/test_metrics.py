"""`dpe metrics`: the series say what the ledger, the run queue and the autoscaler's cursor say,
on a real Dagster instance (SQLite, and PostgreSQL where it runs), read incrementally and with
bounded labels."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from dagster import AssetObservation, DagsterRunStatus, build_sensor_context, materialize
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from dpe_dagster.metrics import METRICS, OTHER, DpeCollector, exposition
from dpe_dagster.tags import HOLD_TAG, TEAM_TAG, pool_tags
from dpe_dagster.usage.budget import BUDGET_HOLD
from dpe_dagster.usage.eventlog import read_node_lifetimes, read_usage
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.records import RUN_USAGE_KEY, NodeLifetime, cost_of
from dpe_dagster.usage.sensor import build_ledger_sensor
from dpe_dagster.usage.summary import Window, by_pool
from tests.reliability.harness import new_run
from tests.support.sensors import store_cursor
from tests.usage.test_reports import DEFS, ENV, forecast, margins, sales


def scrape(collector: DpeCollector) -> dict[str, dict[tuple, float]]:
    """The exposition as a user's Prometheus reads it: sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(exposition(collector)):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return sum(value for key, value in samples.get(name, {}).items() if set(labels.items()) <= set(key))


def record_usage(instance, t0: float, *nodes: str) -> None:
    for node in nodes:
        record_node_lifetime(instance, NodeLifetime(node, "spot-etl", "spot", "local", t0 - 30, time.time() + 30, 10,
                                                    0.36))
    build_ledger_sensor(ENV)(build_sensor_context(instance=instance, repository_def=DEFS.get_repository_def()))


def test_the_ledgers_series_are_what_dpe_usage_says_and_each_record_counts_once(instance):
    t0 = time.time()
    materialize([sales, margins], instance=instance, tags=pool_tags("spot-etl", cpus=1))
    materialize([forecast], instance=instance, tags={**pool_tags("spot-etl", cpus=2), TEAM_TAG: "finance"})
    record_usage(instance, t0, "node-1", "node-2")
    collector = DpeCollector(instance, ENV)
    first = scrape(collector)

    records, nodes = read_usage(instance), read_node_lifetimes(instance)
    assert len(records) == 2
    assert total(first, "dpe_cost_usd_total") == pytest.approx(sum(r.cost_usd for r in records), abs=1e-12)
    assert total(first, "dpe_cost_usd_total", team="finance") == pytest.approx(
        sum(r.cost_usd for r in records if r.team == "finance"), abs=1e-12)
    assert total(first, "dpe_node_seconds_total") == pytest.approx(sum(r.node_seconds for r in records))
    [pool] = by_pool(records, nodes, Window())
    assert total(first, "dpe_paid_usd_total", pool="spot-etl") == pytest.approx(pool["paid_usd"], abs=1e-12)
    assert total(first, "dpe_idle_usd_total", pool="spot-etl") == pytest.approx(
        sum(cost_of(n.idle_seconds, n.price_per_node_hour) for n in nodes), abs=1e-12)
    assert total(first, "dpe_asset_cost_usd_total", asset="sales") > 0
    assert total(first, "dpe_run_wait_seconds_count", pool="spot-etl") == 2
    # The default wait target (10 s) is a bucket's bound: both runs started within it.
    assert total(first, "dpe_run_wait_seconds_bucket", pool="spot-etl", le="10.0") == 2

    # Scraped again with nothing new: the same values (nothing read twice).
    assert scrape(collector)["dpe_cost_usd_total"] == first["dpe_cost_usd_total"]
    # One more run and its record: the counters grow by exactly it.
    materialize([forecast], instance=instance, tags={**pool_tags("spot-etl", cpus=2), TEAM_TAG: "finance"})
    record_usage(instance, t0)
    [new] = [r for r in read_usage(instance) if r.run_id not in {old.run_id for old in records}]
    after = scrape(collector)
    assert total(after, "dpe_cost_usd_total") == pytest.approx(total(first, "dpe_cost_usd_total") + new.cost_usd,
                                                               abs=1e-12)
    assert total(after, "dpe_run_wait_seconds_count") == 3
    # A run's record amended (a node reported late): the new record replaces the old, as in `dpe usage`.
    amended = dataclasses.replace(new, cost_usd=new.cost_usd * 2 + 0.01, node_seconds=new.node_seconds + 60)
    instance.report_runless_asset_event(AssetObservation(asset_key=RUN_USAGE_KEY, metadata=amended.to_metadata()))
    after = scrape(collector)
    assert total(after, "dpe_cost_usd_total") == pytest.approx(sum(r.cost_usd for r in read_usage(instance)), abs=1e-12)
    assert total(after, "dpe_node_seconds_total") == pytest.approx(sum(r.node_seconds for r in read_usage(instance)))
    # A fresh exporter (a restarted Deployment) reads the same totals from the start.
    assert total(scrape(DpeCollector(instance, ENV)), "dpe_cost_usd_total") == pytest.approx(
        total(after, "dpe_cost_usd_total"), abs=1e-12)


def test_team_and_asset_names_are_bounded_and_the_rest_is_other(instance):
    t0 = time.time()
    for team in ("analytics", "finance", "ops"):
        materialize([forecast], instance=instance, tags={**pool_tags("spot-etl", cpus=1), TEAM_TAG: team})
    materialize([sales, margins], instance=instance, tags=pool_tags("spot-etl", cpus=1))
    record_usage(instance, t0, "node-1")
    bounded = scrape(DpeCollector(instance, ENV, max_names=1))
    unbounded = scrape(DpeCollector(instance, ENV))
    teams = {dict(key)["team"] for key in bounded["dpe_cost_usd_total"]}
    assets = {dict(key)["asset"] for key in bounded["dpe_asset_cost_usd_total"]}
    assert len(teams) == 2 and OTHER in teams and len(assets) == 2 and OTHER in assets
    assert len({dict(key)["team"] for key in unbounded["dpe_cost_usd_total"]}) == 3
    # Bounding moves cost between labels, never loses any.
    assert total(bounded, "dpe_cost_usd_total") == pytest.approx(total(unbounded, "dpe_cost_usd_total"), abs=1e-12)
    assert total(bounded, "dpe_asset_cost_usd_total") == pytest.approx(
        total(unbounded, "dpe_asset_cost_usd_total"), abs=1e-12)
    with pytest.raises(ValueError, match="--max-names: must be at least 1"):
        DpeCollector(instance, ENV, max_names=0)


def test_runs_waiting_for_room_and_held_by_the_budget(instance):
    def queued(tags):
        return new_run(instance, tags, DagsterRunStatus.QUEUED)

    created = time.time()
    queued(pool_tags("spot-etl", cpus=2))
    queued(pool_tags("spot-etl", cpus=1))
    queued({**pool_tags("spot-etl", cpus=1), HOLD_TAG: BUDGET_HOLD})
    queued({})  # names no pool: no pool's demand
    samples = scrape(DpeCollector(instance, ENV))
    assert total(samples, "dpe_pool_waiting_runs", pool="spot-etl") == 2
    assert total(samples, "dpe_pool_waiting_cpus", pool="spot-etl") == 3
    assert total(samples, "dpe_pool_held_runs", pool="spot-etl") == 1
    assert 0 <= total(samples, "dpe_pool_oldest_wait_seconds", pool="spot-etl") <= time.time() - created + 1
    # Next to the pool's wait target, as configured (the default 10 s, or the pool's own).
    assert samples["dpe_pool_wait_target_seconds"] == {(("pool", "spot-etl"),): 10.0}
    patient = ENV.model_copy(update={"pools": {"spot-etl": ENV.pool("spot-etl").model_copy(
        update={"wait_target_s": 600.0})}})
    assert scrape(DpeCollector(instance, patient))["dpe_pool_wait_target_seconds"] == {(("pool", "spot-etl"),): 600.0}
    # The local pool has no node here: its states are there, at 0, for queries to see.
    assert total(samples, "dpe_pool_nodes", pool="spot-etl") == 0
    assert samples["dpe_pool_nodes"] and samples["dpe_pool_up"] == {(("pool", "spot-etl"),): 1.0}


def test_every_series_has_help_and_follows_prometheus_names(instance):
    families = {f.name: f for f in text_string_to_metric_families(exposition(DpeCollector(instance, ENV)))}
    for name, metric in METRICS.items():
        exposed = name.removesuffix("_total")
        assert exposed in families, name
        assert families[exposed].documentation == metric.help and families[exposed].type == metric.kind
        assert name.startswith("dpe_")
        assert (metric.kind == "counter") == name.endswith("_total")
        assert not name.endswith("_usd") or metric.kind == "gauge"


def test_the_autoscalers_ticks_and_a_pool_failing_tick_after_tick(aws_sim):

    from dpe_dagster.cli import app
    from dpe_dagster.scaling.sensor import build_autoscaler_sensor

    env, instance, autoscaling = aws_sim()
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName="dpe-sim-spot-etl", ForceDelete=True)
    sensor = build_autoscaler_sensor(env)
    context = build_sensor_context(instance=instance, cursor=None)
    sensor(context)
    first = json.loads(context.cursor)["failures"]["spot-etl"]["at"]
    time.sleep(1.1)
    context = build_sensor_context(instance=instance, cursor=context.cursor)
    sensor(context)
    saved = json.loads(context.cursor)
    assert saved["failures"]["spot-etl"]["since"] == first < saved["failures"]["spot-etl"]["at"]
    store_cursor(instance, context.cursor)  # as the daemon saves a sensor's cursor
    result = CliRunner().invoke(app, ["metrics", "--once"])
    assert result.exit_code == 0, result.output
    samples = {}
    for family in text_string_to_metric_families(result.output):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[dict(sample.labels).get("pool")] = sample.value
    assert samples["dpe_pool_scale_failing"] == {"spot-etl": 1, "ondemand-etl": 0}
    assert samples["dpe_pool_scale_failing_seconds"]["spot-etl"] >= 1.0
    assert samples["dpe_pool_scale_failing_seconds"]["ondemand-etl"] == 0
    assert samples["dpe_pool_up"] == {"spot-etl": 0, "ondemand-etl": 1}, "the missing group: its provider fails"
    for pool in ("spot-etl", "ondemand-etl"):
        assert samples["dpe_autoscaler_last_tick_timestamp_seconds"][pool] == saved["ticks"][pool]["at"]
        assert 0 < samples["dpe_autoscaler_tick_duration_seconds"][pool] < 60


def test_bad_port_and_missing_instance_are_named(tmp_path, monkeypatch):
    import socket

    from dpe_dagster.cli import app

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "none"))
    result = CliRunner().invoke(app, ["metrics", "--once"])
    assert result.exit_code == 2 and "no dpe instance at" in result.output
    assert CliRunner().invoke(app, ["metrics", "--port", "0"]).exit_code == 2
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["metrics", "--port", str(port), "--address", "127.0.0.1"])
    assert result.exit_code == 2 and f"--port: cannot listen on 127.0.0.1:{port}" in " ".join(result.output.split())


def test_the_docs_list_every_series_as_served():
    from tests.paths import PROJECT_ROOT

    docs = (PROJECT_ROOT / "docs" / "metrics.md").read_text()
    for name, metric in METRICS.items():
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        assert f"| `{name}` | {metric.kind} | {labels} | {metric.help} |" in docs, f"docs/metrics.md: {name}"


def test_the_docs_explain_every_alert_that_ships():
    import yaml

    from tests.paths import PROJECT_ROOT

    docs = (PROJECT_ROOT / "docs" / "metrics.md").read_text()
    rules = yaml.safe_load((PROJECT_ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())["spec"]["groups"]
    for rule in (r for group in rules for r in group["rules"] if "alert" in r):
        assert f"| `{rule['alert']}` | {rule['labels']['severity']} |" in docs, f"docs/metrics.md: {rule['alert']}"
