"""The usage-ledger sensor: writes one usage record for every run that ended on a pool, and amends
a record once when a node that was alive under the run is recorded only after it.

Where it has got to is kept by event log storage ids, never by timestamps: the run-finished events
(and node lifetimes) carry ids that the storage assigns in insertion order, whatever the clocks of
the processes that wrote them say."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from dagster import AssetRecordsFilter, DagsterEventType, DefaultSensorStatus, RunsFilter, SensorEvaluationContext, SkipReason, sensor
from dagster._core.event_api import RunStatusChangeRecordsFilter

from dpe_dagster.config import Environment
from dpe_dagster.pools import PoolError, open_pool
from dpe_dagster.usage.pricing import pricer_for
from dpe_dagster.tags import POOL_TAG
from dpe_dagster.usage.writes import amend_for_late_nodes, record_run_usage
from dpe_dagster.lock import pool_lock
from dpe_dagster.usage.pods import price_pending_pods
from dpe_dagster.usage.records import NODE_USAGE_KEY, NodeLifetime

LEDGER_SENSOR = "dpe_usage_ledger"
ENDED_EVENTS = (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)
PAGE = 500
MAX_ROWS = 5000  # per kind and tick; the rest waits for the next tick
# A storage id is taken when its row is inserted, but readers see the row only once its
# transaction commits, so a row below an id already read can still appear. Rows are read again
# until this long (on this sensor's clock) has passed since a read saw a higher id, and the rows
# handled meanwhile are kept in the cursor so that only the new ones are handled.
LATE_COMMIT_S = 60.0


@dataclass(frozen=True)
class ReadCursor:
    """How far one stream of rows has been read: every row with an id up to `after` has been
    handled, and so have the rows in `handled` above it; `reads` are the recent reads (when,
    highest id seen) not yet LATE_COMMIT_S old, below whose highest ids a late row may appear."""

    after: int | None = None
    reads: tuple[tuple[float, int], ...] = ()
    handled: frozenset[int] = frozenset()

    def advanced(self, started: float, finished: float, highest: int | None, handled: set[int]) -> "ReadCursor":
        """After a read from `after` that began at `started`, ended at `finished`, saw rows up to
        `highest` and handled those in `handled`. A read that was LATE_COMMIT_S old when this one
        began had every row below its highest committed by then, so this read saw them all."""
        settled = [m for t, m in self.reads if t + LATE_COMMIT_S <= started]
        after = max([self.after or 0, *settled]) if (self.after is not None or settled) else None
        reads = [(t, m) for t, m in self.reads if t + LATE_COMMIT_S > started]
        if highest is not None and (after is None or highest > after):
            reads.append((finished, highest))
        return ReadCursor(after, tuple(reads),
                          frozenset(i for i in self.handled | handled if after is None or i > after))

    def to_json(self) -> dict:
        return {"after": self.after, "reads": [list(r) for r in self.reads], "handled": sorted(self.handled)}

    @classmethod
    def from_json(cls, raw: dict) -> "ReadCursor":
        after = raw.get("after")
        return cls(None if after is None else int(after), tuple((float(t), int(m)) for t, m in raw.get("reads", ())),
                   frozenset(int(i) for i in raw.get("handled", ())))


def parse_cursor(cursor: str | None) -> dict[str, dict[str, ReadCursor]]:
    """Per pool, a ReadCursor over run-finished events ("runs") and one over node lifetimes
    ("nodes"). A cursor from before storage ids (a number, or pool: number) is read as empty: the
    ledger's own records keep the runs it reads again from being written twice."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except ValueError:
        value = None
    if isinstance(value, (int, float)):
        return {}
    if isinstance(value, dict):
        return {str(pool): {stream: ReadCursor.from_json(raw) for stream, raw in streams.items()}
                for pool, streams in value.items() if isinstance(streams, dict)}
    raise ValueError(f"{LEDGER_SENSOR} cursor: {cursor!r} is neither empty nor a JSON object of pool: streams")


def dump_cursor(cursors: dict[str, dict[str, ReadCursor]]) -> str | None:
    raw = {pool: {stream: c.to_json() for stream, c in streams.items()} for pool, streams in cursors.items()}
    return json.dumps(raw, sort_keys=True) if raw else None


def _pages(fetch, after: int | None) -> tuple[list, bool]:
    """Rows above `after` in id order, up to MAX_ROWS; and whether more were left for later."""
    rows, cursor = [], None
    while True:
        result = fetch(after, cursor)
        rows.extend(result.records)
        if not result.has_more:
            return rows, False
        if len(rows) >= MAX_ROWS:
            return rows, True
        cursor = result.cursor


def ended_events(instance, after: int | None) -> tuple[list, int | None]:
    """Run-finished events of every kind above `after`, in id order, and the highest id up to
    which that list is complete (one query per kind: where one kind was cut off, the others'
    later events wait for the next read)."""
    events, horizon = [], None
    for kind in ENDED_EVENTS:
        rows, more = _pages(lambda after, cursor, kind=kind: instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(kind, after_storage_id=after), limit=PAGE, cursor=cursor, ascending=True),
            after)
        events.extend(rows)
        if more:
            horizon = rows[-1].storage_id if horizon is None else min(horizon, rows[-1].storage_id)
    events = sorted((e for e in events if horizon is None or e.storage_id <= horizon), key=lambda e: e.storage_id)
    return events, (events[-1].storage_id if events else None)


def node_lifetimes_after(instance, after: int | None) -> tuple[list[tuple[int, NodeLifetime]], int | None]:
    """Node lifetimes recorded above `after`, each with its storage id, and the highest id read."""
    rows, _ = _pages(lambda after, cursor: instance.fetch_observations(
        AssetRecordsFilter(asset_key=NODE_USAGE_KEY, after_storage_id=after), limit=PAGE, cursor=cursor,
        ascending=True), after)
    return ([(r.storage_id, NodeLifetime.from_metadata(r.asset_observation.metadata)) for r in rows],
            rows[-1].storage_id if rows else None)


def record_ended_runs(context: SensorEvaluationContext, env: Environment) -> list[str]:
    """Writes the records of runs that ended on each pool since that pool's cursor, and amends
    those a newly recorded node was alive under (see `amend_for_late_nodes`). A pool that fails
    keeps its cursor, so its runs are written on a later tick; every other pool moves on (the
    rule for what fails a pool and what fails the tick is PoolError's)."""
    written, _ = _record_ended_runs(context, env)
    return written


def _record_ended_runs(context: SensorEvaluationContext, env: Environment) -> tuple[list[str], dict[str, str]]:
    cursors = parse_cursor(context.cursor)
    written: list[str] = []
    failed: dict[str, str] = {}
    pricer = pricer_for(env)
    owners = _owners(context)
    instance = context.instance
    # One read of each stream per tick, from the pool furthest behind; each pool then takes what
    # is above its own cursor (a read per pool cost 1,000 reads a tick at 1,000 pools).
    own = {name: (cursors.get(name, {}).get("runs", ReadCursor()), cursors.get(name, {}).get("nodes", ReadCursor()))
           for name in sorted(env.pools)}
    started = time.time()
    every_event, highest = ended_events(instance, _furthest_behind(c.after for c, _ in own.values()))
    every_lifetime, newest_node = node_lifetimes_after(instance, _furthest_behind(c.after for _, c in own.values()))
    finished = time.time()
    for name, (runs_cursor, nodes_cursor) in own.items():
        events = [e for e in every_event if _above(e.storage_id, runs_cursor)]
        lifetimes = [(sid, n) for sid, n in every_lifetime if _above(sid, nodes_cursor)]
        order = {e.run_id: i for i, e in reversed(list(enumerate(events)))}
        records = sorted(instance.get_run_records(RunsFilter(run_ids=list(order), tags={POOL_TAG: name}))
                         if order else [], key=lambda r: order[r.dagster_run.run_id])
        # A finish event is stored before the run's status: a run not ended yet is read again.
        # A run on no pool (a job of container assets only) is read by the first pool alone: its
        # pending pod spans are priced there, on whichever pools they ran.
        unpooled = [r for r in instance.get_run_records(RunsFilter(run_ids=list(order)))
                    if r.dagster_run.tags.get(POOL_TAG) not in env.pools] if order and name == min(env.pools) else []
        waiting = {r.dagster_run.run_id for r in [*records, *unpooled] if not r.dagster_run.is_finished}
        records = [r for r in records if r.dagster_run.run_id not in waiting]
        unpooled = [r.dagster_run.run_id for r in unpooled if r.dagster_run.run_id not in waiting]
        handled_nodes = {sid for sid, _ in lifetimes}
        lifetimes = [(sid, n) for sid, n in lifetimes if n.pool == name]
        try:
            if records or lifetimes or unpooled:
                # Under the pool's lock: a node the autoscaler is removing right now is then either
                # still live here or already in the ledger, never neither.
                with pool_lock(instance, name):
                    live = {name: open_pool(env.pool(name), env).nodes()}
                    for record in records:
                        usage = record_run_usage(instance, record, env, live, pricer, owners)
                        if usage is not None:
                            written.append(usage.run_id)
                            context.log.info(f"usage of run {usage.run_id}: {usage.node_seconds:.1f} node-s on "
                                             f"{usage.pool}, ${usage.cost_usd:.6f}")
                    for run_id in [*(r.dagster_run.run_id for r in records), *unpooled]:
                        for pod in price_pending_pods(instance, env, run_id, live, pricer,
                                                      lambda pool: open_pool(env.pool(pool), env).nodes()):
                            context.log.info(f"usage of pod {pod.run_id}: {pod.node_seconds:.1f} node-s on "
                                             f"{pod.pool}, ${pod.cost_usd:.6f}")
                    for usage in amend_for_late_nodes(instance, env, name, lifetimes, live, pricer, owners):
                        context.log.info(f"usage of run {usage.run_id} amended: {usage.node_seconds:.1f} node-s, "
                                         f"${usage.cost_usd:.6f}")
        except PoolError as error:
            failed[name] = str(error)
            context.log.error(f"usage ledger: pool {name} failed, its runs are written on a later tick: {error}")
            continue
        cursors[name] = {
            "runs": runs_cursor.advanced(started, finished, highest,
                                         {e.storage_id for e in events if e.run_id not in waiting}),
            "nodes": nodes_cursor.advanced(started, finished, newest_node, handled_nodes),
        }
    context.update_cursor(dump_cursor(cursors))
    return written, failed


def _furthest_behind(afters) -> int | None:
    afters = list(afters)
    return None if not afters or any(a is None for a in afters) else min(afters)


def _above(storage_id: int, cursor: ReadCursor) -> bool:
    return (cursor.after is None or storage_id > cursor.after) and storage_id not in cursor.handled


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
