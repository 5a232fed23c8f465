"""dpe's state as Prometheus series: `dpe metrics` serves them on /metrics.

An exporter in the way kube-state-metrics is one: it reads, at each scrape, what dpe already keeps
and changes nothing. Its sources:

- the pools, as their providers report them (nodes by state and lifecycle, target, busy and idle
  nodes, nodes not ready past their boot timeout), looked at once per scrape as the autoscaler's
  tick looks at them (`look_ahead`);
- the run queue: runs waiting for room (queued or starting) per pool, their CPUs, the longest
  wait (next to the pool's `wait_target_s`, from the configuration), and the runs a budget holds;
- the autoscaler's cursor, as the daemon stored it: when each pool was last looked at, how long
  its part of the tick took, since when it has been failing;
- the budgets: what each pool with a `daily_budget_usd` has spent today;
- the ledger (dpe's records in the event log): cost and node-seconds charged to runs by pool and
  team, what the pools paid for their nodes and the idle part of it, interruptions handled, and
  waits for room from the run records (queued to running) as a histogram per pool.

The ledger and the waits are read incrementally: each scrape reads only the records written since
the one before (by the event log's cursor), so a year of runs costs one read, once. Labels are
bounded: `pool` by the environment's pools, `state`, `lifecycle` and `kind` by dpe's own values,
and `team` and `asset` by `max_names` (default 50): the first that many distinct names the ledger
shows are named, and every later one is counted under `other`, so the set of series never grows
past it and never changes membership (counters stay monotonic).

Every series, its type and help text is in `METRICS` (the docs list them; the dashboard and the
alert rules may query only these)."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from dpe_dagster.config import DEFAULT_WAIT_TARGET_S, Environment
from dpe_dagster.pools import NodePool, PoolError, look_ahead, open_pool
from dpe_dagster.pools.base import NODE_STATES, RUNNING
from dpe_dagster.scaling.cursor import read_ticks
from dpe_dagster.usage.waits import RunWaits
from dpe_dagster.tags import HOLD_TAG, TagError, pool_request
from dpe_dagster.usage.budget import BUDGET_HOLD, spent_today
from dpe_dagster.usage.eventlog import observations_after
from dpe_dagster.usage.records import NODE_USAGE_KEY, POD_USAGE_KEY, RUN_USAGE_KEY, NodeLifetime, UsageRecord, cost_of

log = logging.getLogger(__name__)

GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"
OTHER = "other"
DEFAULT_MAX_NAMES = 50
# Waits for room, seconds: from a few seconds (room was there) to an hour (a pool at its max). The
# default wait target is a bound, so the share of runs within it is exact for pools that keep it.
WAIT_BUCKETS = tuple(sorted({5.0, DEFAULT_WAIT_TARGET_S, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0}))
_WAITING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING]


@dataclass(frozen=True)
class Metric:
    kind: str
    help: str
    labels: tuple[str, ...]


# name (as exposed; counters end in _total) -> what it is. The one list of dpe's series.
METRICS: dict[str, Metric] = {
    "dpe_pool_nodes": Metric(GAUGE, "Nodes of the pool as its provider reports them, by state and lifecycle.",
                             ("pool", "state", "lifecycle")),
    "dpe_pool_target_nodes": Metric(GAUGE, "The size the pool is asked to reach.", ("pool",)),
    "dpe_pool_min_nodes": Metric(GAUGE, "The pool's min_size.", ("pool",)),
    "dpe_pool_max_nodes": Metric(GAUGE, "The pool's max_size.", ("pool",)),
    "dpe_pool_busy_nodes": Metric(GAUGE, "Nodes running work that must not be interrupted (or whose "
                                         "busy status cannot be told).", ("pool",)),
    "dpe_pool_idle_nodes": Metric(GAUGE, "Running nodes with no work on them.", ("pool",)),
    "dpe_pool_nodes_past_boot_timeout": Metric(GAUGE, "Nodes launched longer ago than the pool's boot_timeout_s "
                                                      "and still not ready.", ("pool",)),
    "dpe_pool_boot_timeout_seconds": Metric(GAUGE, "The pool's boot_timeout_s.", ("pool",)),
    "dpe_pool_up": Metric(GAUGE, "1 when the pool's provider answered this scrape, 0 when it failed.", ("pool",)),
    "dpe_pool_waiting_runs": Metric(GAUGE, "Runs queued or starting that ask the pool for room.", ("pool",)),
    "dpe_pool_waiting_cpus": Metric(GAUGE, "CPUs those runs ask for.", ("pool",)),
    "dpe_pool_oldest_wait_seconds": Metric(GAUGE, "How long the longest-waiting of those runs has waited "
                                                  "(0 when none waits).", ("pool",)),
    "dpe_pool_wait_target_seconds": Metric(GAUGE, "The pool's wait_target_s: how long a run may wait for room, "
                                                  "at p95 (a run's dpe/wait_target_s tag sets its own).", ("pool",)),
    "dpe_pool_held_runs": Metric(GAUGE, "Queued runs held because the pool has spent its daily budget.", ("pool",)),
    "dpe_pool_budget_usd": Metric(GAUGE, "The pool's daily_budget_usd (pools with a budget only).", ("pool",)),
    "dpe_pool_spent_today_usd": Metric(GAUGE, "What the pool has paid for nodes since 00:00 UTC (pools with a "
                                              "budget only).", ("pool",)),
    "dpe_autoscaler_last_tick_timestamp_seconds": Metric(GAUGE, "When the autoscaler last looked at the pool "
                                                                "(unix time).", ("pool",)),
    "dpe_autoscaler_tick_duration_seconds": Metric(GAUGE, "How long the pool's part of the autoscaler's last "
                                                          "tick took.", ("pool",)),
    "dpe_pool_scale_failing": Metric(GAUGE, "1 while the autoscaler's last tick failed to size the pool.", ("pool",)),
    "dpe_pool_scale_failing_seconds": Metric(GAUGE, "How long the pool has failed to be sized, tick after tick "
                                                    "(0 when its last tick sized it).", ("pool",)),
    "dpe_cost_usd_total": Metric(COUNTER, "Cost charged to finished runs and containers.", ("pool", "team")),
    "dpe_node_seconds_total": Metric(COUNTER, "Node-seconds charged to finished runs and containers.",
                                     ("pool", "team")),
    "dpe_asset_cost_usd_total": Metric(COUNTER, "Cost charged to assets (their runs' cost split by step time; "
                                                "asset names bounded, the rest under 'other').", ("asset",)),
    "dpe_paid_usd_total": Metric(COUNTER, "What the pool paid for its removed nodes.", ("pool",)),
    "dpe_idle_usd_total": Metric(COUNTER, "The part of it no run was busy on.", ("pool",)),
    "dpe_node_lifetime_seconds_total": Metric(COUNTER, "Seconds the pool's removed nodes were alive.", ("pool",)),
    "dpe_interruptions_total": Metric(COUNTER, "Nodes removed after a spot interruption warning, by kind.",
                                      ("pool", "kind")),
    "dpe_run_wait_seconds": Metric(HISTOGRAM, "Waits for room: from a run's queueing to its start.", ("pool",)),
    "dpe_exporter_scrape_duration_seconds": Metric(GAUGE, "How long the exporter took to read dpe's state.", ()),
}


class BoundedNames:
    """The first `limit` distinct names seen keep their name; every later one is `other`."""

    def __init__(self, limit: int):
        self.limit = limit
        self._named: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._named:
            return name
        if len(self._named) < self.limit:
            self._named.add(name)
            return name
        return OTHER


@dataclass(frozen=True)
class _Share:
    """What one usage record added to the sums (kept to take it back when the record is amended)."""

    key: tuple[str, str]  # (pool, team label)
    cost_usd: float
    node_seconds: float
    assets: tuple[tuple[str, float], ...]  # (asset label, cost)


@dataclass
class Ledger:
    """Running sums over the ledger's records, read incrementally. A run's amended record replaces
    what its earlier record added."""

    max_names: int = DEFAULT_MAX_NAMES
    cost: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    node_seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    asset_cost: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    paid: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    idle: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lifetime: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    interruptions: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    _cursors: dict[str, str | None] = field(default_factory=dict)
    _counted: dict[tuple[str, str], "_Share"] = field(default_factory=dict)  # what each record added

    def __post_init__(self):
        self._teams = BoundedNames(self.max_names)
        self._assets = BoundedNames(self.max_names)

    def read(self, instance: DagsterInstance) -> None:
        for kind, key in (("run", RUN_USAGE_KEY), ("pod", POD_USAGE_KEY)):
            records, self._cursors[kind] = observations_after(instance, key, self._cursors.get(kind))
            for r in records:
                self._count(kind, UsageRecord.from_metadata(r.asset_observation.metadata))
        records, self._cursors["node"] = observations_after(instance, NODE_USAGE_KEY, self._cursors.get("node"))
        for r in records:
            self._count_node(NodeLifetime.from_metadata(r.asset_observation.metadata))

    def _count(self, kind: str, record: UsageRecord) -> None:
        before = self._counted.pop((kind, record.run_id), None)
        if before is not None:
            self._add(before, -1.0)
        share = _Share((record.pool, self._teams(record.team or "")), record.cost_usd, record.node_seconds,
                       tuple((self._assets(asset), float(part["cost_usd"])) for asset, part in record.asset_costs.items()))
        self._add(share, 1.0)
        self._counted[(kind, record.run_id)] = share

    def _add(self, share: "_Share", sign: float) -> None:
        self.cost[share.key] += sign * share.cost_usd
        self.node_seconds[share.key] += sign * share.node_seconds
        for asset, cost in share.assets:
            self.asset_cost[asset] += sign * cost

    def _count_node(self, node: NodeLifetime) -> None:
        self.paid[node.pool] += node.cost_usd
        self.idle[node.pool] += cost_of(node.idle_seconds, node.price_per_node_hour)
        self.lifetime[node.pool] += node.lifetime_seconds
        if node.interrupted:
            self.interruptions[(node.pool, node.interrupted)] += 1


@dataclass
class Waits:
    """Waits for room (queued to started) per pool, from the run-start events read incrementally."""

    env: Environment
    buckets: tuple[float, ...] = WAIT_BUCKETS
    counts: dict[str, list[int]] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _runs: RunWaits | None = None

    def read(self, instance: DagsterInstance) -> None:
        if self._runs is None:
            self._runs = RunWaits(frozenset(self.env.pools))
        for wait in self._runs.read(instance):
            self._observe(wait.pool, wait.seconds)

    def _observe(self, pool: str, seconds: float) -> None:
        counts = self.counts.setdefault(pool, [0] * (len(self.buckets) + 1))
        counts[next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))] += 1
        self.sums[pool] += seconds


class DpeCollector:
    """A prometheus_client collector of dpe's series for one environment and Dagster instance."""

    def __init__(self, instance: DagsterInstance, env: Environment, max_names: int = DEFAULT_MAX_NAMES,
                 pools: Mapping[str, NodePool] | None = None, clock: Callable[[], float] = time.time):
        if max_names < 1:
            raise ValueError(f"--max-names: must be at least 1; got {max_names}")
        self.instance = instance
        self.env = env
        self.clock = clock
        self._pools = dict(pools) if pools is not None else {}
        self.ledger = Ledger(max_names)
        self.waits = Waits(env)
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Read the ledger and the waits so far (a year of runs: tens of seconds), so that every
        scrape after it reads only what is new. `dpe metrics` does it before it serves."""
        with self._lock:
            self.ledger.read(self.instance)
            self.waits.read(self.instance)

    def describe(self):
        return []  # collected at each scrape, not at registration

    def _pool(self, name: str) -> NodePool:
        if name not in self._pools:
            self._pools[name] = open_pool(self.env.pool(name), self.env)
        return self._pools[name]

    def collect(self):
        with self._lock:  # the HTTP server may scrape from two threads at once
            started = time.perf_counter()
            samples = self.samples()
            samples["dpe_exporter_scrape_duration_seconds"] = [((), time.perf_counter() - started)]
            yield from families(samples, self.ledger, self.waits)

    def samples(self) -> dict[str, list[tuple[tuple[str, ...], float]]]:
        """Every gauge's samples at this moment: name -> [(label values, value)]."""
        now = self.clock()
        out: dict[str, list[tuple[tuple[str, ...], float]]] = defaultdict(list)
        self._pools_now(out, now)
        self._queue_now(out, now)
        self._autoscaler_now(out, now)
        self.ledger.read(self.instance)
        self.waits.read(self.instance)
        return out

    def _pools_now(self, out, now: float) -> None:
        from dpe_dagster.usage.pricing import pricer_for

        pools = {name: self._pool(name) for name in self.env.pools}
        try:
            look_ahead(pools.values())
        except PoolError as error:
            log.warning("looking at every pool at once failed; each is looked at alone: %s", error)
        pricer = None
        for name, pool in pools.items():
            config = self.env.pool(name)
            out["dpe_pool_min_nodes"].append(((name,), config.min_size))
            out["dpe_pool_max_nodes"].append(((name,), config.max_size))
            out["dpe_pool_boot_timeout_seconds"].append(((name,), config.boot_timeout_s))
            out["dpe_pool_wait_target_seconds"].append(((name,), config.wait_target_s))
            try:
                nodes, target = pool.nodes(), pool.target()
            except PoolError as error:
                log.warning("pool %s: %s", name, error)
                out["dpe_pool_up"].append(((name,), 0))
                continue
            out["dpe_pool_up"].append(((name,), 1))
            out["dpe_pool_target_nodes"].append(((name,), target))
            # Every state of the pool's own lifecycle has a sample, 0 included: a query sees an empty pool.
            by_state: dict[tuple[str, str], int] = {(state, config.lifecycle): 0 for state in NODE_STATES}
            for node in nodes:
                by_state.setdefault((node.state, node.lifecycle), 0)
                by_state[(node.state, node.lifecycle)] += 1
            for (state, lifecycle), count in sorted(by_state.items()):
                out["dpe_pool_nodes"].append(((name, state, lifecycle), count))
            running = [n for n in nodes if n.state == RUNNING]
            out["dpe_pool_busy_nodes"].append(((name,), sum(n.busy for n in running)))
            out["dpe_pool_idle_nodes"].append(((name,), sum(not n.busy for n in running)))
            out["dpe_pool_nodes_past_boot_timeout"].append(((name,), sum(
                n.state != RUNNING and now - n.launched_at > config.boot_timeout_s for n in nodes)))
            if config.daily_budget_usd is not None:
                pricer = pricer or pricer_for(self.env)
                out["dpe_pool_budget_usd"].append(((name,), config.daily_budget_usd))
                out["dpe_pool_spent_today_usd"].append(((name,), spent_today(self.instance, config, nodes, pricer,
                                                                               now)))

    def _queue_now(self, out, now: float) -> None:
        runs: dict[str, int] = defaultdict(int)
        cpus: dict[str, float] = defaultdict(float)
        oldest: dict[str, float] = defaultdict(float)
        held: dict[str, int] = defaultdict(int)
        for record in self.instance.get_run_records(RunsFilter(statuses=_WAITING)):
            tags = record.dagster_run.tags
            try:
                request = pool_request(tags, self.env)
            except TagError:
                continue  # the launcher fails such a run, naming its tag
            if request is None:
                continue
            if tags.get(HOLD_TAG) == BUDGET_HOLD:
                held[request.pool] += 1
                continue
            runs[request.pool] += 1
            cpus[request.pool] += request.cpus
            oldest[request.pool] = max(oldest[request.pool], now - record.create_timestamp.timestamp())
        for name in self.env.pools:
            out["dpe_pool_waiting_runs"].append(((name,), runs[name]))
            out["dpe_pool_waiting_cpus"].append(((name,), cpus[name]))
            out["dpe_pool_oldest_wait_seconds"].append(((name,), oldest[name]))
            out["dpe_pool_held_runs"].append(((name,), held[name]))

    def _autoscaler_now(self, out, now: float) -> None:
        ticks = read_ticks(self.instance)
        for name in self.env.pools:
            tick = ticks.get(name)
            if tick is None:
                continue  # the autoscaler has not looked at it yet: no sample, not a zero
            out["dpe_autoscaler_last_tick_timestamp_seconds"].append(((name,), tick["at"]))
            out["dpe_autoscaler_tick_duration_seconds"].append(((name,), tick["duration_s"]))
            failing_since = tick.get("failing_since")
            out["dpe_pool_scale_failing"].append(((name,), 0 if failing_since is None else 1))
            out["dpe_pool_scale_failing_seconds"].append(((name,), 0.0 if failing_since is None
                                                          else max(0.0, now - failing_since)))


def families(samples: Mapping[str, list[tuple[tuple[str, ...], float]]], ledger: Ledger, waits: Waits) -> Iterable[Any]:
    """The metric families of one scrape, in the order of METRICS."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    counters: dict[str, Iterable[tuple[tuple[str, ...], float]]] = {
        "dpe_cost_usd_total": ledger.cost.items(),
        "dpe_node_seconds_total": ledger.node_seconds.items(),
        "dpe_asset_cost_usd_total": (((asset,), value) for asset, value in ledger.asset_cost.items()),
        "dpe_paid_usd_total": (((pool,), value) for pool, value in ledger.paid.items()),
        "dpe_idle_usd_total": (((pool,), value) for pool, value in ledger.idle.items()),
        "dpe_node_lifetime_seconds_total": (((pool,), value) for pool, value in ledger.lifetime.items()),
        "dpe_interruptions_total": ledger.interruptions.items(),
    }
    for name, metric in METRICS.items():
        if metric.kind == GAUGE:
            family = GaugeMetricFamily(name, metric.help, labels=metric.labels)
            for labels, value in samples.get(name, []):
                family.add_metric(list(labels), float(value))
        elif metric.kind == COUNTER:
            family = CounterMetricFamily(name.removesuffix("_total"), metric.help, labels=metric.labels)
            for labels, value in sorted(counters[name]):
                family.add_metric(list(labels), max(0.0, float(value)))
        else:
            family = HistogramMetricFamily(name, metric.help, labels=metric.labels)
            for pool, counts in sorted(waits.counts.items()):
                cumulative, buckets = 0, []
                for bound, count in zip([*map(str, waits.buckets), "+Inf"], counts):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric([pool], buckets, waits.sums[pool])
        yield family


def exposition(collector: DpeCollector) -> str:
    """The series as /metrics serves them (Prometheus' text format)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def serve(collector: DpeCollector, port: int, address: str = "0.0.0.0"):
    """Serve /metrics on `address:port` from a background thread; returns (server, thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return start_http_server(port, addr=address, registry=registry)
