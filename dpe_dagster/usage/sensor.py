"""The usage-ledger sensor: writes one usage record for every run that ended on a pool."""

from __future__ import annotations

import json
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


def parse_cursor(cursor: str | None, pools) -> dict[str, float]:
    """Each pool's cursor: the newest update time of its runs already written. A cursor from
    before pools had their own (one number) applies to every pool."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except ValueError:
        value = None
    if isinstance(value, (int, float)):
        return {name: float(value) for name in pools}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    raise ValueError(f"{LEDGER_SENSOR} cursor: {cursor!r} is neither a number nor a JSON object of pool: time")


def record_ended_runs(context: SensorEvaluationContext, env: Environment) -> list[str]:
    """Writes the records of runs that ended on each pool since that pool's cursor. A pool whose
    provider fails is logged (naming the pool) and keeps its cursor, so its runs are written on a
    later tick; every other pool is recorded and moves on."""
    written, _ = _record_ended_runs(context, env)
    return written


def _record_ended_runs(context: SensorEvaluationContext, env: Environment) -> tuple[list[str], dict[str, str]]:
    cursors = parse_cursor(context.cursor, env.pools)
    written: list[str] = []
    failed: dict[str, str] = {}
    pricer = None
    owners = _owners(context)
    for name in sorted(env.pools):
        after = cursors[name] - OVERLAP_S if name in cursors else None
        records = context.instance.get_run_records(
            filters=RunsFilter(
                statuses=ENDED,
                tags={POOL_TAG: name},
                updated_after=datetime.fromtimestamp(after, timezone.utc) if after else None,
            ),
            order_by="update_timestamp",
            ascending=True,
            limit=BATCH,
        )
        if not records:
            continue
        try:
            pricer = pricer or pricer_for(env)
            # Under the pool's lock: a node the autoscaler is removing right now is then either still
            # live here or already in the ledger, never neither (which would charge the run nothing).
            with pool_lock(context.instance, name):
                live = {name: open_pool(env.pool(name), env).nodes()}
                for record in records:
                    usage = record_run_usage(context.instance, record, env, live, pricer, owners)
                    if usage is not None:
                        written.append(usage.run_id)
                        context.log.info(f"usage of run {usage.run_id}: {usage.node_seconds:.1f} node-s on "
                                         f"{usage.pool}, ${usage.cost_usd:.6f}")
        except Exception as error:  # noqa: BLE001 - one pool's failure must not stop the others
            failed[name] = f"{type(error).__name__}: {error}"
            context.log.error(f"usage ledger: pool {name} failed, its runs are written on a later tick: "
                              f"{failed[name]}")
            continue
        newest = max(r.update_timestamp.timestamp() for r in records)
        cursors[name] = max(newest, cursors.get(name, 0.0))
    context.update_cursor(json.dumps(cursors, sort_keys=True) if cursors else None)
    return written, failed


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
        written, failed = _record_ended_runs(context, env)
        message = f"recorded usage of {len(written)} run(s)" if written else "no newly ended runs"
        if failed:
            message += "; " + "; ".join(f"pool {name} failed (its runs wait for a later tick): {error}"
                                        for name, error in sorted(failed.items()))
        return SkipReason(message)

    return dpe_usage_ledger
