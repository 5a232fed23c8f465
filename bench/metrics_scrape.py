"""Scrape cost of dpe's Prometheus exporter (`dpe_dagster/metrics.py`) against one autoscaler tick.

Issue 24 ("Monitoring"): reading must be cheap: scraping every 15 s at 20 pools and a year of runs
costs no more than the autoscaler's own tick.

Built once per storage (SQLite; PostgreSQL with `--storages`), in one run:

- `--pools` `aws_asg` pools on moto's server on loopback (one group per pool, as tick_cost's),
  `--active` STARTED runs and `--waiting` STARTING runs on them (so pools have nodes and the
  queue gauges count something);
- a year of history: `--runs` finished runs (create times spread over 365 days, about 55 a day by
  default), each tagged with its pool and one of `--teams` teams, inserted through the run
  storage's own tables; for each, the ledger's record as dpe writes it (`usage.writes.write_run_usage`: an
  observation of `dpe/run_usage` in the run's log, whose `asset_costs` name 1 to 5 of `--assets`
  asset names, and one observation per asset), its RUN_START and RUN_SUCCESS events (the waits
  histogram reads the run starts), and `--nodes` removed nodes' lifetimes (`dpe/node_usage`, some
  of them interrupted). The events are built as dpe and Dagster build them (`observation_event`,
  `report_dagster_event`'s EventLogEntry) and inserted in bulk with the event log storage's own
  statement (`prepare_insert_event_batch`) into the table its readers query (SQLite: the index
  shard, where Dagster mirrors asset and run-status events; the per-run shards, which the
  exporter never reads, are not written). Writing them one at a time through Dagster's write path
  would take many times longer (the report gives both: the bulk fill's ms per run, and the write
  path's, timed on the new runs below);
- the autoscaler's cursor stored in the instance after each tick, as the daemon stores it.

Measured, interleaved round by round (`--scrapes` rounds after one warm-up round; medians):

1. cold scrape: a new `DpeCollector` (as a restarted exporter), `exposition()` once: every pool
   looked at and the year of ledger records and run starts read once;
2. steady scrape: `exposition()` on one long-lived collector, after `--new` finished runs were
   written through dpe's own write path (run events, ledger record, a node lifetime; untimed);
   the new records name assets beyond the first `--max-names`, which the exporter counts under
   `other`;
3. the baseline, in the same run: one tick of the real `dpe_autoscaler` sensor over the same pools
   and instance (its cursor carried from tick to tick).

Goal: steady scrape <= one tick. Also reported: the series exposed, and that the `team` and
`asset` labels stay bounded (at most `--max-names` + 1 values, `other` included) and that the set
of ledger series does not grow from scrape to scrape as new names arrive.

    .venv/bin/python bench/metrics_scrape.py                   # 20 pools, 20,000 runs, SQLite
    .venv/bin/python bench/metrics_scrape.py --quick           # 4 pools, 2,000 runs
    .venv/bin/python bench/metrics_scrape.py --storages sqlite,postgres
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import OUT, BenchError, autoscaler_ticks, machine, median, run_main, write_report  # noqa: E402
from tests.support.sensors import store_cursor  # noqa: E402
from bench.tick_cost import PG_BASE, add_runs, environment, open_instance, pool_name, postgres  # noqa: E402

PG_DB = "dpe_bench_metrics"
YEAR_S = 365 * 86400.0
BATCH = 500  # runs per bulk insert
JOB = "etl"
PRICE = 0.035  # the pools' price_per_node_hour (tick_cost's environment)


def _at_least(parser, flag: str, value: int, low: int) -> None:
    if value < low:
        parser.error(f"{flag}: must be at least {low}; got {value}")


# -- the year's history -------------------------------------------------------------------------------
@dataclass
class Run:
    run_id: str
    pool: str
    team: str
    created: float
    started: float
    ended: float
    failed: bool
    assets: list[str]


@dataclass
class History:
    runs: int = 0
    usage_records: int = 0
    asset_observations: int = 0
    run_status_events: int = 0
    run_starts: int = 0
    node_lifetimes: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    asset_names: set[str] = field(default_factory=set)


def plan_runs(rng: random.Random, count: int, n_pools: int, teams: list[str], assets: list[str],
              now: float) -> list[Run]:
    """`count` finished runs, created evenly over the year before `now`: waits for room mostly of
    seconds, some of a node's boot, a few of a pool at its max; 5 to 60 minutes of work each."""
    runs = []
    for i in range(count):
        created = now - YEAR_S + (i + rng.random()) * (YEAR_S - 7200) / count
        draw = rng.random()
        wait = (rng.uniform(1, 15) if draw < 0.7 else rng.uniform(60, 300) if draw < 0.9
                else rng.uniform(300, 1800) if draw < 0.98 else rng.uniform(1800, 5400))
        started = created + wait
        team = teams[rng.randrange(len(teams))]
        runs.append(Run(str(uuid.uuid4()), pool_name(i % n_pools), team, created, started,
                        started + rng.uniform(300, 3600), rng.random() < 0.03,
                        rng.sample(assets, rng.randint(1, min(5, len(assets))))))
    return runs


def usage_of(run: Run):
    from dpe_dagster.usage.records import UsageRecord, cost_of

    node_seconds = run.ended - run.started
    cost = cost_of(node_seconds, PRICE)
    weights = [1.0 + zlib.crc32(a.encode()) % 7 for a in run.assets]
    total = sum(weights)
    return UsageRecord(
        run_id=run.run_id, job_name=JOB, pool=run.pool, team=run.team, status="FAILURE" if run.failed else "SUCCESS",
        cpus=2.0, memory_gb=4.0, node_share=1.0, node_seconds=node_seconds, price_per_node_hour=PRICE,
        price_source="config", cost_usd=cost, started_at=run.started, ended_at=run.ended, lifecycle="spot",
        assets=tuple(sorted(run.assets)),
        asset_costs={a: {"cost_usd": cost * w / total, "node_seconds": node_seconds * w / total, "team": run.team}
                     for a, w in zip(run.assets, weights)},
        nodes=({"node_id": f"i-{run.run_id[:17].replace('-', '')}", "instance_type": "m6i.large",
                "lifecycle": "spot", "zone": "us-east-1a"},),
    )


def lifetime_of(rng: random.Random, i: int, n_pools: int, now: float):
    from dpe_dagster.pools.base import INTERRUPTIONS, REMOVED_IDLE, REMOVED_INTERRUPTED
    from dpe_dagster.usage.records import NodeLifetime

    launched = now - YEAR_S + rng.random() * (YEAR_S - 7200)
    lifetime = rng.uniform(600, 4 * 3600)
    interrupted = INTERRUPTIONS[i % len(INTERRUPTIONS)] if rng.random() < 0.05 else ""
    return NodeLifetime(
        node_id=f"i-{uuid.uuid4().hex[:17]}", pool=pool_name(i % n_pools), lifecycle="spot", instance_type="m6i.large",
        launched_at=launched, removed_at=launched + lifetime, busy_seconds=lifetime * rng.uniform(0.5, 0.95),
        price_per_node_hour=PRICE, removed_because=REMOVED_INTERRUPTED if interrupted else REMOVED_IDLE,
        interrupted=interrupted, interrupted_at=launched + lifetime - 120 if interrupted else None,
    )


class _Reported:
    """Stands in for the instance in the ledger's own writer (`writes.write_run_usage`): keeps the events it
    reports, so that the history holds exactly what dpe writes, stored in bulk."""

    def __init__(self):
        self.events = []

    def report_dagster_event(self, dagster_event, run_id: str, **_kwargs) -> None:
        self.events.append((dagster_event, run_id))


def _entry(dagster_event, run_id: str, timestamp: float):
    """The EventLogEntry `DagsterInstance.report_dagster_event` builds."""
    from dagster._core.events.log import EventLogEntry

    return EventLogEntry(user_message="", level=logging.INFO, job_name=dagster_event.job_name, run_id=run_id,
                         error_info=None, timestamp=timestamp, step_key=dagster_event.step_key,
                         dagster_event=dagster_event)


def _status_event(kind, run: Run):
    from dagster._core.events import DagsterEvent

    return DagsterEvent(event_type_value=kind.value, job_name=JOB, message=f'{kind.value} of run for "{JOB}".')


def _node_event(lifetime):
    from dagster import AssetObservation, DagsterEventType
    from dagster._core.events import AssetObservationData, DagsterEvent
    from dagster._core.instance.utils import RUNLESS_JOB_NAME

    from dpe_dagster.usage.records import NODE_USAGE_KEY

    # As `record_node_lifetime` reports it (`report_runless_asset_event` builds this event).
    observation = AssetObservation(asset_key=NODE_USAGE_KEY, metadata=lifetime.to_metadata(),
                                   description=f"node {lifetime.node_id} of pool {lifetime.pool} removed")
    return DagsterEvent(event_type_value=DagsterEventType.ASSET_OBSERVATION.value,
                        event_specific_data=AssetObservationData(observation), job_name=RUNLESS_JOB_NAME)


def insert_runs(instance, runs: list[Run]) -> None:
    """Finished runs through the run storage's own tables (tick_cost's `add_runs`, with the year's
    create, start and end times and a team tag)."""
    from dagster import DagsterRun, DagsterRunStatus
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
    from dagster._serdes import serialize_value

    from dpe_dagster.tags import TEAM_TAG, pool_tags

    def utc(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)

    rows, tags = [], []
    for run in runs:
        run_tags = {**pool_tags(run.pool, cpus=2), TEAM_TAG: run.team}
        status = DagsterRunStatus.FAILURE if run.failed else DagsterRunStatus.SUCCESS
        body = DagsterRun(job_name=JOB, run_id=run.run_id, status=status, tags=run_tags)
        rows.append({"run_id": run.run_id, "pipeline_name": JOB, "status": status.value,
                     "run_body": serialize_value(body), "snapshot_id": None, "partition": None, "partition_set": None,
                     "create_timestamp": utc(run.created), "update_timestamp": utc(run.ended),
                     "start_time": run.started, "end_time": run.ended})
        tags += [{"run_id": run.run_id, "key": k, "value": v} for k, v in run_tags.items()]
    with instance.run_storage.connect() as conn:
        conn.execute(RunsTable.insert(), rows)
        conn.execute(RunTagsTable.insert(), tags)


def insert_events(instance, entries) -> None:
    """Events in one statement of the event log storage's own (`prepare_insert_event_batch`), into
    the table its cross-run readers query (SQLite: the index shard)."""
    if not entries:
        return
    storage = instance.event_log_storage
    with storage.index_connection() as conn:
        conn.execute(storage.prepare_insert_event_batch(entries))


def write_history(instance, rng: random.Random, runs: list[Run], n_nodes: int, n_pools: int, now: float,
                  progress=None) -> History:
    from dagster import DagsterEventType

    from dpe_dagster.usage.writes import write_run_usage
    from dpe_dagster.usage.records import RUN_USAGE_KEY

    started = time.perf_counter()
    history = History()
    lifetimes = sorted((lifetime_of(rng, i, n_pools, now) for i in range(n_nodes)), key=lambda n: n.removed_at)
    next_node = 0
    for first in range(0, len(runs), BATCH):
        batch = runs[first:first + BATCH]
        insert_runs(instance, batch)
        timed = []  # (timestamp, order, entry): each run's events in the order dpe writes them
        for run in batch:
            timed.append((run.started, 0, _entry(_status_event(DagsterEventType.RUN_START, run), run.run_id,
                                                 run.started)))
            end = DagsterEventType.RUN_FAILURE if run.failed else DagsterEventType.RUN_SUCCESS
            timed.append((run.ended, 1, _entry(_status_event(end, run), run.run_id, run.ended)))
            usage = usage_of(run)
            reported = _Reported()
            write_run_usage(reported, JOB, usage, f"run {run.run_id} on pool {run.pool}")
            written = run.ended + 30  # the ledger sensor's tick after the run ended
            for order, (event, run_id) in enumerate(reported.events, start=2):
                timed.append((written, order, _entry(event, run_id, written)))
            history.cost_usd += usage.cost_usd
            history.asset_names.update(usage.asset_costs)
            history.usage_records += sum(1 for e, _ in reported.events if e.asset_key == RUN_USAGE_KEY)
            history.asset_observations += sum(1 for e, _ in reported.events if e.asset_key != RUN_USAGE_KEY)
        until = batch[-1].ended if first + BATCH < len(runs) else float("inf")
        while next_node < len(lifetimes) and lifetimes[next_node].removed_at <= until:
            node = lifetimes[next_node]
            timed.append((node.removed_at, 0, _entry(_node_event(node), "", node.removed_at)))
            next_node += 1
        timed.sort(key=lambda t: (t[0], t[1]))
        entries = [entry for _, _, entry in timed]
        for start in range(0, len(entries), BATCH):
            insert_events(instance, entries[start:start + BATCH])
        history.runs += len(batch)
        history.run_status_events += 2 * len(batch)
        history.run_starts += len(batch)
        if progress:
            progress(history.runs)
    history.node_lifetimes = len(lifetimes)
    history.seconds = time.perf_counter() - started
    return history


def write_new_runs(instance, rng: random.Random, count: int, n_pools: int, teams: list[str], serial: int,
                   history: History) -> float:
    """`count` runs that end now, each through dpe's and Dagster's own write paths: the run, its
    start and success events (`report_dagster_event`), its ledger record (`writes.write_run_usage`) and one
    removed node (`record_node_lifetime`). Their assets are new names. Returns the seconds taken."""
    from dagster import DagsterEventType, DagsterRun, DagsterRunStatus

    from dpe_dagster.tags import TEAM_TAG, pool_tags
    from dpe_dagster.usage.writes import record_node_lifetime, write_run_usage

    started = time.perf_counter()
    for k in range(count):
        now = time.time()
        pool, team = pool_name((serial + k) % n_pools), teams[(serial + k) % len(teams)]
        run = Run(str(uuid.uuid4()), pool, team, now - 60, now - 50, now, False,
                  [f"fresh/asset_{serial + k:05d}", f"fresh/asset_{serial + k:05d}_b"])
        instance.add_run(DagsterRun(job_name=JOB, run_id=run.run_id, status=DagsterRunStatus.STARTING,
                                    tags={**pool_tags(pool, cpus=2), TEAM_TAG: team}))
        for kind in (DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS):
            instance.report_dagster_event(_status_event(kind, run), run_id=run.run_id)
        usage = usage_of(run)
        write_run_usage(instance, JOB, usage, f"run {run.run_id} on pool {pool}")
        node = lifetime_of(rng, serial + k, n_pools, now)
        record_node_lifetime(instance, node)
        history.runs += 1
        history.run_starts += 1
        history.run_status_events += 2
        history.usage_records += 1
        history.asset_observations += len(usage.asset_costs)
        history.node_lifetimes += 1
        history.cost_usd += usage.cost_usd
        history.asset_names.update(usage.asset_costs)
    return time.perf_counter() - started


# -- the instance and the autoscaler ------------------------------------------------------------------
# -- a scrape -------------------------------------------------------------------------------------------
def scrape(collector) -> tuple[float, str]:
    from dpe_dagster.metrics import exposition

    started = time.perf_counter()
    text = exposition(collector)
    return time.perf_counter() - started, text


def series_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of one exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def check_scrape(text: str, history: History, n_pools: int, max_names: int, what: str) -> dict:
    """What one exposition shows: its series, the bounded labels, and that it counted the whole
    history (every run start in the histogram, every record's cost in the counters)."""
    series = series_of(text)
    teams = {labels["team"] for labels, _ in series.get("dpe_cost_usd_total", [])}
    assets = {labels["asset"] for labels, _ in series.get("dpe_asset_cost_usd_total", [])}
    waits = sum(v for labels, v in series.get("dpe_run_wait_seconds_count", []))
    cost = sum(v for _, v in series.get("dpe_cost_usd_total", []))
    up = sum(v for _, v in series.get("dpe_pool_up", []))
    if int(waits) != history.run_starts:
        raise BenchError(f"{what}: the waits histogram counts {int(waits)} run starts; {history.run_starts} were written")
    if abs(cost - history.cost_usd) > 1e-6 * max(1.0, history.cost_usd):
        raise BenchError(f"{what}: dpe_cost_usd_total sums to {cost:.6f}; the records written cost {history.cost_usd:.6f}")
    if up != n_pools:
        raise BenchError(f"{what}: {up:g} of {n_pools} pools up")
    return {"series": sum(len(v) for v in series.values()),
            "ledger_series": sorted(f"{name}{sorted(labels.items())}" for name, samples in series.items()
                                    if name.startswith(("dpe_cost_usd", "dpe_node_seconds", "dpe_asset_cost"))
                                    for labels, _ in samples),
            "team_labels": len(teams), "asset_labels": len(assets), "other_asset": "other" in assets,
            "bounded": len(teams) <= max_names + 1 and len(assets) <= max_names + 1,
            "nodes": sum(v for _, v in series.get("dpe_pool_nodes", [])),
            "waiting_runs": sum(v for _, v in series.get("dpe_pool_waiting_runs", [])),
            "autoscaler_pools": len(series.get("dpe_autoscaler_last_tick_timestamp_seconds", []))}


# -- one storage ------------------------------------------------------------------------------------------
def measure(instance, args, console) -> dict:
    from dagster import DagsterRunStatus

    from dpe_dagster.metrics import DpeCollector

    env = environment(args.pools)
    rng = random.Random(args.seed)
    now = time.time()
    teams = [f"team-{i:02d}" for i in range(args.teams)]
    assets = [f"warehouse/{teams[i % len(teams)]}/table_{i:04d}" for i in range(args.assets)]
    add_runs(instance, args.active, args.pools, DagsterRunStatus.STARTED, 0)
    # STARTING: launched, waiting for room (QUEUED runs need a code location's origin).
    add_runs(instance, args.waiting, args.pools, DagsterRunStatus.STARTING, args.active)
    runs = plan_runs(rng, args.runs, args.pools, teams, assets, now)

    def progress(done: int) -> None:
        if done % 5000 < BATCH or done == len(runs):
            console.print(f"  history: {done:,} / {len(runs):,} runs written")

    history = write_history(instance, rng, runs, args.nodes, args.pools, now, progress)
    bulk_events = history.usage_records + history.asset_observations + history.run_status_events + history.node_lifetimes
    console.print(f"  history: {history.runs:,} runs, {history.usage_records:,} usage records, "
                  f"{history.asset_observations:,} asset observations, {history.run_status_events:,} run events, "
                  f"{history.node_lifetimes:,} node lifetimes in {history.seconds:.1f} s "
                  f"({history.seconds / bulk_events * 1000:.3f} ms per event, run rows included)")

    year = dataclasses.replace(history, asset_names=set(history.asset_names))
    tick = autoscaler_ticks(instance, env, after=lambda cursor: store_cursor(instance, cursor))
    warm_up = [tick(), tick()]  # opens the pools, scales up for the active and waiting runs
    steady_collector = DpeCollector(instance, env, max_names=args.max_names)
    cold, steady, ticks, writes, checks = [], [], [], [], []
    serial = 0
    for number in range(args.scrapes + 1):  # round 0 warms up each measurement
        fresh = DpeCollector(instance, env, max_names=args.max_names)
        cold_s, cold_text = scrape(fresh)
        cold_check = check_scrape(cold_text, history, args.pools, args.max_names, f"round {number}: cold scrape")
        if number == 0:
            first_s, first_text = scrape(steady_collector)  # the long-lived exporter's first scrape
            check_scrape(first_text, history, args.pools, args.max_names, "first scrape")
        written_s = write_new_runs(instance, rng, args.new, args.pools, teams, serial, history)
        serial += args.new
        steady_s, steady_text = scrape(steady_collector)
        steady_check = check_scrape(steady_text, history, args.pools, args.max_names,
                                    f"round {number}: steady scrape")
        tick_s = tick()
        if number:
            cold.append(cold_s)
            steady.append(steady_s)
            ticks.append(tick_s)
            writes.append(written_s)
            checks.append(steady_check)
        console.print(f"  round {number}{' (warm-up)' if not number else ''}: cold {cold_s * 1000:.0f} ms, "
                      f"steady {steady_s * 1000:.1f} ms, tick {tick_s * 1000:.1f} ms; "
                      f"{steady_check['series']} series")
    last = checks[-1] if checks else steady_check
    stable = all(c["ledger_series"] == checks[0]["ledger_series"] for c in checks)
    result = {
        "pools": args.pools, "max_names": args.max_names,
        "history": {"runs": year.runs, "usage_records": year.usage_records,
                    "asset_observations": year.asset_observations, "run_status_events": year.run_status_events,
                    "node_lifetimes": year.node_lifetimes, "asset_names": len(year.asset_names),
                    "teams": args.teams, "bulk_write_s": year.seconds,
                    "bulk_ms_per_event": year.seconds / bulk_events * 1000,
                    "bulk_ms_per_run": year.seconds / year.runs * 1000,
                    # A new run through the write paths: the run, two run events, its record and two
                    # asset observations, a node lifetime (with its once-only check).
                    "write_path_ms_per_run": median(writes) / args.new * 1000 if args.new and writes else None},
        "new_runs_written": history.runs - year.runs, "runs_read_by_last_scrape": history.runs,
        "warm_up_ticks_s": warm_up, "first_scrape_s": first_s,
        "cold_scrape_s": median(cold), "steady_scrape_s": median(steady), "tick_s": median(ticks),
        "cold_scrapes_s": cold, "steady_scrapes_s": steady, "ticks_s": ticks,
        "steady_over_tick": median(steady) / median(ticks), "cold_over_tick": median(cold) / median(ticks),
        "goal_met": median(steady) <= median(ticks),
        "series": last["series"], "series_per_scrape": [c["series"] for c in checks],
        "team_labels": last["team_labels"], "asset_labels": last["asset_labels"], "other_asset": last["other_asset"],
        "bounded": all(c["bounded"] for c in checks) and cold_check["bounded"],
        "ledger_series_stable": stable, "nodes_seen": last["nodes"], "waiting_runs_seen": last["waiting_runs"],
        "autoscaler_pools_seen": last["autoscaler_pools"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=20, help="aws_asg pools (default 20)")
    parser.add_argument("--runs", type=int, default=20000,
                        help="finished runs over the year, each with its ledger record (default 20000, ~55 a day)")
    parser.add_argument("--nodes", type=int, default=3000, help="removed nodes' lifetimes in the ledger (default 3000)")
    parser.add_argument("--assets", type=int, default=300, help="distinct asset names in the records (default 300)")
    parser.add_argument("--teams", type=int, default=20, help="distinct teams (default 20)")
    parser.add_argument("--max-names", type=int, default=50,
                        help="the exporter's bound on team and asset names (default 50, as `dpe metrics`)")
    parser.add_argument("--active", type=int, default=20, help="STARTED runs, one per pool in turn (default 20)")
    parser.add_argument("--waiting", type=int, default=5,
                        help="STARTING runs (waiting for room), one per pool in turn (default 5)")
    parser.add_argument("--new", type=int, default=3,
                        help="finished runs written, with their records, before each steady scrape (default 3)")
    parser.add_argument("--scrapes", type=int, default=5,
                        help="measured rounds (cold scrape, steady scrape, tick) after one warm-up round (default 5)")
    parser.add_argument("--storages", default="sqlite",
                        help="sqlite, postgres or both, comma-separated (default sqlite); postgres at "
                             f"{PG_BASE} is skipped with a message if it does not answer")
    parser.add_argument("--seed", type=int, default=24, help="random seed of the history (default 24)")
    parser.add_argument("--quick", action="store_true", help="4 pools, 2000 runs, 300 node lifetimes, 3 rounds")
    parser.add_argument("--out", type=Path, default=OUT / "metrics_scrape", help="working folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.pools, args.runs, args.nodes, args.active, args.waiting, args.scrapes = 4, 2000, 300, 4, 2, 3
    for flag, low in (("pools", 1), ("runs", 1), ("nodes", 0), ("assets", 1), ("teams", 1), ("max_names", 1),
                      ("active", 0), ("waiting", 0), ("new", 0), ("scrapes", 1)):
        _at_least(parser, f"--{flag.replace('_', '-')}", getattr(args, flag), low)
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    if not storages or any(s not in ("sqlite", "postgres") for s in storages):
        parser.error(f"--storages: allowed values are sqlite, postgres; got {args.storages!r}")

    from rich.console import Console
    from rich.table import Table

    from dpe_dagster.pools.aws.emulator import emulated_aws

    console = Console()
    console.print(f"machine: {machine()}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results, skipped = [], {}
    with emulated_aws(environment(args.pools)):
        for storage in storages:
            if storage == "postgres":
                try:
                    postgres("drop", PG_DB)
                    postgres("create", PG_DB)
                    reason = None
                except BenchError as error:
                    reason = str(error)
                if reason:
                    console.print(f"postgres: skipped, the database at {PG_BASE} does not answer ({reason})")
                    skipped[storage] = reason
                    continue
            console.print(f"{storage}: {args.pools} pools, {args.runs:,} runs over a year")
            try:
                with open_instance(storage, args.out / storage / "dagster", PG_DB) as instance:
                    results.append({"storage": storage, **measure(instance, args, console)})
            finally:
                if storage == "postgres":
                    postgres("drop", PG_DB)
    table = Table(title=f"Scrape vs one autoscaler tick, {args.pools} pools, {args.runs:,} runs "
                        f"(medians of {args.scrapes})")
    for col in ("storage", "cold scrape ms", "steady scrape ms", "tick ms", "steady / tick", "cold / tick",
                "series", "team / asset labels"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["storage"], f"{r['cold_scrape_s'] * 1000:.0f}", f"{r['steady_scrape_s'] * 1000:.1f}",
                      f"{r['tick_s'] * 1000:.1f}", f"{r['steady_over_tick']:.2f}x", f"{r['cold_over_tick']:.2f}x",
                      str(r["series"]), f"{r['team_labels']} / {r['asset_labels']}")
    console.print(table)
    for r in results:
        console.print(f"{r['storage']}: steady scrape <= tick: {'met' if r['goal_met'] else 'not met'} "
                      f"({r['steady_over_tick']:.2f}x); labels bounded (<= {args.max_names} + 1): "
                      f"{'yes' if r['bounded'] else 'NO'}; ledger series stable across scrapes: "
                      f"{'yes' if r['ledger_series_stable'] else 'NO'}")
    for r in results:
        r.pop("ledger_series", None)
    path = write_report(args.out, "metrics_scrape", started, scrapes=args.scrapes, new_runs_per_scrape=args.new,
                        results=results, skipped=skipped)
    console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    run_main("metrics_scrape", main)
