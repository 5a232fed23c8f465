"""The autoscaler sensor's cursor: what it remembers between ticks (each live node's memory, the
pools' scale-up arrivals, the pools whose last tick failed, when each pool was last looked at), as
JSON, and reading it back from the instance, where the daemon stores every sensor's cursor (for
reports, the health check and `dpe metrics`)."""

from __future__ import annotations

import json

from dpe_dagster.scaling.activity import PoolArrivals
from dpe_dagster.scaling.control import NodeMemory

AUTOSCALER_SENSOR = "dpe_autoscaler"


def load_cursor(cursor: str | None) -> dict[str, dict[str, NodeMemory]]:
    raw = json.loads(cursor) if cursor else {}
    return {
        pool: {node_id: NodeMemory.from_json(mem) for node_id, mem in nodes.items()}
        for pool, nodes in raw.get("nodes", {}).items()
    }


def load_arrivals(cursor: str | None) -> dict[str, PoolArrivals]:
    raw = json.loads(cursor) if cursor else {}
    return {pool: PoolArrivals.from_json(value) for pool, value in raw.get("arrivals", {}).items()}


def load_failures(cursor: str | None) -> dict[str, dict]:
    """Each pool whose last tick failed: {"error": the PoolError's message, "at": epoch seconds,
    "since": the first of the ticks in a row that failed}. A pool is in it until a tick sizes it again."""
    raw = json.loads(cursor) if cursor else {}
    return {pool: {"error": str(value["error"]), "at": float(value["at"]),
                   "since": float(value.get("since", value["at"]))}
            for pool, value in raw.get("failures", {}).items()}


def load_ticks(cursor: str | None) -> dict[str, dict]:
    """When the autoscaler last looked at each pool: {"at": epoch seconds, "duration_s": how long
    the pool's part of that tick took}."""
    raw = json.loads(cursor) if cursor else {}
    return {pool: {"at": float(value["at"]), "duration_s": float(value["duration_s"])}
            for pool, value in raw.get("ticks", {}).items()}


def _saved_cursors(instance) -> list[str | None]:
    """The autoscaler's cursors as the daemon stored them in the instance (one per code location)."""
    from dagster._core.definitions.run_request import InstigatorType

    return [getattr(state.instigator_data, "cursor", None)
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            if state.name == AUTOSCALER_SENSOR]


def read_node_memory(instance) -> dict[str, dict[str, NodeMemory]]:
    """What the autoscaler remembers of each live node (busy seconds, ...), by pool and node id;
    the most recently seen when several code locations run it."""
    out: dict[str, dict[str, NodeMemory]] = {}
    for cursor in _saved_cursors(instance):
        for pool, nodes in load_cursor(cursor).items():
            for node_id, mem in nodes.items():
                known = out.setdefault(pool, {}).get(node_id)
                if known is None or (mem.last_seen or 0) > (known.last_seen or 0):
                    out[pool][node_id] = mem
    return out


def read_busy_seconds(instance) -> dict[str, dict[str, float]]:
    """The busy seconds the autoscaler has counted of each live node, by pool and node id (what
    the reports add for nodes the ledger has no lifetime for yet: `usage.live.BusySoFar`)."""
    return {pool: {node_id: mem.busy_seconds for node_id, mem in nodes.items()}
            for pool, nodes in read_node_memory(instance).items()}


def read_failures(instance) -> dict[str, dict]:
    """The failures the autoscaler saved in its cursor (in the instance, as the daemon stores every
    sensor's cursor), by pool; the latest when several code locations run it."""
    out: dict[str, dict] = {}
    for cursor in _saved_cursors(instance):
        for pool, failure in load_failures(cursor).items():
            if pool not in out or failure["at"] > out[pool]["at"]:
                out[pool] = failure
    return out


def read_ticks(instance) -> dict[str, dict]:
    """Each pool's last tick as the autoscaler saved it ({"at", "duration_s"}), with
    "failing_since" (epoch seconds) while its ticks fail, else None; the latest when several code
    locations run it."""
    out: dict[str, dict] = {}
    for cursor in _saved_cursors(instance):
        failures = load_failures(cursor)
        for pool, tick in load_ticks(cursor).items():
            if pool not in out or tick["at"] > out[pool]["at"]:
                failure = failures.get(pool)
                out[pool] = {**tick, "failing_since": failure["since"] if failure else None}
    return out


def dump_cursor(memory: dict[str, dict[str, NodeMemory]], arrivals: dict[str, PoolArrivals] | None = None,
                failures: dict[str, dict] | None = None, ticks: dict[str, dict] | None = None) -> str:
    raw: dict = {"nodes": {pool: {n: m.to_json() for n, m in nodes.items()} for pool, nodes in memory.items()}}
    if arrivals:
        raw["arrivals"] = {pool: value.to_json() for pool, value in arrivals.items()}
    if failures:
        raw["failures"] = failures
    if ticks:
        raw["ticks"] = ticks
    return json.dumps(raw, sort_keys=True)
