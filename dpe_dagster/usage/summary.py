"""Usage grouped for people: by run, asset, pool, team or day, within a window.

Everything here is computed from the ledger's records alone (run records and node lifetimes read
back from the event log), so the CLI and the `platform_usage` asset agree to the cent."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dpe_dagster.usage.attribution import NodeSpan, RunSpan, attribute
from dpe_dagster.usage.records import NodeLifetime, UsageRecord, cost_of, iso

GROUPINGS = ("run", "asset", "pool", "team", "day")
DAY = 86400.0


@dataclass(frozen=True)
class Window:
    since: float | None = None
    until: float | None = None

    def holds(self, ts: float | None) -> bool:
        return ts is not None and (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


def _runs_in(records: list[UsageRecord], window: Window) -> list[UsageRecord]:
    return [r for r in records if window.holds(r.ended_at)]


def by_run(records: list[UsageRecord], window: Window) -> list[dict[str, Any]]:
    return [r.as_json() for r in _runs_in(records, window)]


def _sum_parts(records: list[UsageRecord], key_of) -> list[dict[str, Any]]:
    rows: dict[Any, dict[str, Any]] = {}
    for record in records:
        parts = record.asset_costs or {"": {"cost_usd": record.cost_usd, "node_seconds": record.node_seconds,
                                            "team": record.team}}
        seen = set()
        for asset, part in parts.items():
            key = key_of(asset, part, record)
            row = rows.setdefault(key, {"runs": 0, "node_seconds": 0.0, "cost_usd": 0.0})
            row["node_seconds"] += part["node_seconds"]
            row["cost_usd"] += part["cost_usd"]
            if key not in seen:
                row["runs"] += 1
                seen.add(key)
    return [{"key": k, **v} for k, v in rows.items()]


def by_asset(records: list[UsageRecord], window: Window) -> list[dict[str, Any]]:
    rows = _sum_parts(_runs_in(records, window), lambda asset, part, record: (asset or "(no asset)", part["team"]))
    return sorted(({"asset": r["key"][0], "team": r["key"][1], "runs": r["runs"], "node_seconds": r["node_seconds"],
                    "cost_usd": r["cost_usd"]} for r in rows), key=lambda r: (-r["cost_usd"], r["asset"]))


def by_team(records: list[UsageRecord], window: Window) -> list[dict[str, Any]]:
    rows = _sum_parts(_runs_in(records, window), lambda asset, part, record: part["team"])
    return sorted(({"team": r["key"], "runs": r["runs"], "node_seconds": r["node_seconds"], "cost_usd": r["cost_usd"]}
                   for r in rows), key=lambda r: (-r["cost_usd"], r["team"]))


def _spans(records: list[UsageRecord], nodes: list[NodeLifetime]):
    runs = [RunSpan(r.run_id, r.pool, r.node_share, r.started_at, r.ended_at)
            for r in records if r.started_at and r.ended_at and r.node_share > 0]
    spans = [NodeSpan(n.node_id, n.pool, n.price_per_node_hour, n.launched_at, n.removed_at) for n in nodes]
    return runs, spans


def _bounds(records: list[UsageRecord], nodes: list[NodeLifetime], window: Window) -> tuple[float, float]:
    times = [t for r in records for t in (r.started_at, r.ended_at) if t] + \
            [t for n in nodes for t in (n.launched_at, n.removed_at)]
    since = window.since if window.since is not None else (min(times) if times else 0.0)
    until = window.until if window.until is not None else (max(times) if times else 0.0)
    return since, until


def by_pool(records: list[UsageRecord], nodes: list[NodeLifetime], window: Window) -> list[dict[str, Any]]:
    """Per pool: what runs were charged, what the pool paid for its nodes, and the idle rest."""
    since, until = _bounds(records, nodes, window)
    runs, spans = _spans(records, nodes)
    _, pools = attribute(runs, spans, since=since, until=until)
    counted = defaultdict(int)
    for r in _runs_in(records, window):
        counted[r.pool] += 1
    return sorted(({"pool": name, "runs": counted[name], "paid_usd": cost.paid, "attributed_usd": cost.attributed,
                    "idle_usd": cost.idle, "node_seconds": cost.node_seconds,
                    "idle_node_seconds": cost.idle_node_seconds} for name, cost in pools.items()),
                  key=lambda r: r["pool"])


def day_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, timezone.utc)
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()


def _days(since: float, until: float):
    """(day label, start, end) of each UTC day in [since, until), clipped to it."""
    day = day_start(since) if until > since else until
    while day < until:
        yield datetime.fromtimestamp(day, timezone.utc).date().isoformat(), max(day, since), min(day + DAY, until)
        day += DAY


def by_day(records: list[UsageRecord], nodes: list[NodeLifetime], window: Window) -> list[dict[str, Any]]:
    since, until = _bounds(records, nodes, window)
    runs, spans = _spans(records, nodes)
    rows = []
    for label, lo, hi in _days(since, until):
        _, pools = attribute(runs, spans, since=lo, until=hi)
        ended = [r for r in records if Window(lo, hi).holds(r.ended_at)]
        rows.append({
            "day": label,
            "runs": len(ended),
            "paid_usd": sum(p.paid for p in pools.values()),
            "attributed_usd": sum(p.attributed for p in pools.values()),
            "idle_usd": sum(p.idle for p in pools.values()),
            "node_seconds": sum(p.node_seconds for p in pools.values()),
        })
    return rows


def by_pool_day(records: list[UsageRecord], nodes: list[NodeLifetime], window: Window) -> list[dict[str, Any]]:
    """Per pool and day: what its nodes cost (each node's lifetime in the day at its price, as the
    provider bills it) next to what attribution charged runs and left idle. The two are computed
    apart, so that paid = attributed + idle is a real check of the report."""
    since, until = _bounds(records, nodes, window)
    runs, spans = _spans(records, nodes)
    rows = []
    for label, lo, hi in _days(since, until):
        _, pools = attribute(runs, spans, since=lo, until=hi)
        paid: dict[str, float] = defaultdict(float)
        for n in nodes:
            paid[n.pool] += cost_of(max(0.0, min(n.removed_at, hi) - max(n.launched_at, lo)), n.price_per_node_hour)
        for pool in sorted(set(pools) | set(paid)):
            cost = pools.get(pool)
            rows.append({"day": label, "pool": pool, "paid_usd": paid.get(pool, 0.0),
                         "attributed_usd": cost.attributed if cost else 0.0, "idle_usd": cost.idle if cost else 0.0})
    return rows


def always_on_cost(nodes: list[NodeLifetime], window: Window, records: list[UsageRecord] = ()) -> dict[str, Any]:
    """What a 24x7 cluster sized for each pool's peak node count would have cost over the window."""
    since, until = _bounds(list(records), nodes, window)
    hours = max(0.0, until - since) / 3600
    total = 0.0
    peaks = {}
    for pool in sorted({n.pool for n in nodes}):
        events = sorted([(n.launched_at, 1) for n in nodes if n.pool == pool]
                        + [(n.removed_at, -1) for n in nodes if n.pool == pool])
        alive = peak = 0
        for _, step in events:
            alive += step
            peak = max(peak, alive)
        price = max(n.price_per_node_hour for n in nodes if n.pool == pool)
        peaks[pool] = {"peak_nodes": peak, "price_per_node_hour": price, "cost_usd": peak * price * hours}
        total += peak * price * hours
    return {"hours": hours, "pools": peaks, "cost_usd": total, "since": iso(since), "until": iso(until)}


def summarize(by: str, records: list[UsageRecord], nodes: list[NodeLifetime], window: Window) -> list[dict[str, Any]]:
    if by not in GROUPINGS:
        raise ValueError(f"--by: must be one of {', '.join(GROUPINGS)}; got {by!r}")
    if by == "run":
        return by_run(records, window)
    if by == "asset":
        return by_asset(records, window)
    if by == "team":
        return by_team(records, window)
    if by == "pool":
        return by_pool(records, nodes, window)
    return by_day(records, nodes, window)


def parse_time(option: str, value: str | None) -> float | None:
    """An ISO date or date-time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option}: must be an ISO date or date-time like 2026-11-24 or 2026-11-24T06:00; "
                         f"got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
