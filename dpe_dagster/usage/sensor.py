"""The usage-ledger sensor: writes one usage record for every run that ended on a pool."""

from __future__ import annotations

from datetime import datetime, timezone

from dagster import DagsterRunStatus, DefaultSensorStatus, RunsFilter, SensorEvaluationContext, SkipReason, sensor

from dpe_dagster.config import Environment
from dpe_dagster.pools import open_pool
from dpe_dagster.usage.pricing import pricer_for
from dpe_dagster.scaling.tags import POOL_TAG
from dpe_dagster.usage.ledger import record_run_usage
from dpe_dagster.usage.lock import pool_lock

LEDGER_SENSOR = "dpe_usage_ledger"
ENDED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
BATCH = 200
# Runs that end within the same instant as the cursor are read again; the ledger's own
# idempotence makes that harmless, and it means no run is skipped at a boundary.
OVERLAP_S = 1.0


def record_ended_runs(context: SensorEvaluationContext, env: Environment) -> list[str]:
    after = float(context.cursor) - OVERLAP_S if context.cursor else None
    records = context.instance.get_run_records(
        filters=RunsFilter(
            statuses=ENDED,
            tags={POOL_TAG: sorted(env.pools)},
            updated_after=datetime.fromtimestamp(after, timezone.utc) if after else None,
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=BATCH,
    )
    written = []
    pricer = pricer_for(env) if records else None
    owners = _owners(context)
    by_pool: dict[str, list] = {}
    for record in records:
        by_pool.setdefault(record.dagster_run.tags.get(POOL_TAG), []).append(record)
    for name, pool_records in by_pool.items():
        if name not in env.pools:
            continue
        # Under the pool's lock: a node the autoscaler is removing right now is then either still
        # live here or already in the ledger, never neither (which would charge the run nothing).
        with pool_lock(context.instance, name):
            live = {name: open_pool(env.pool(name), env).nodes()}
            for record in pool_records:
                usage = record_run_usage(context.instance, record, env, live, pricer, owners)
                if usage is not None:
                    written.append(usage.run_id)
                    context.log.info(f"usage of run {usage.run_id}: {usage.node_seconds:.1f} node-s on "
                                     f"{usage.pool}, ${usage.cost_usd:.6f}")
    if records:
        newest = max(r.update_timestamp.timestamp() for r in records)
        context.update_cursor(str(max(newest, float(context.cursor or 0))))
    return written


def _owners(context: SensorEvaluationContext):
    """Asset owners from the code location, for teams ("team:analytics")."""
    try:
        graph = context.repository_def.asset_graph
    except Exception:  # noqa: BLE001 - a sensor built for tests has no repository
        return None

    def owners(key):
        return graph.get(key).owners if graph.has(key) else ()

    return owners


def build_ledger_sensor(env: Environment):
    @sensor(
        name=LEDGER_SENSOR,
        minimum_interval_seconds=env.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="dpe: writes what each ended run used and cost into the event log, once.",
    )
    def dpe_usage_ledger(context: SensorEvaluationContext):
        written = record_ended_runs(context, env)
        return SkipReason(f"recorded usage of {len(written)} run(s)" if written else "no newly ended runs")

    return dpe_usage_ledger
