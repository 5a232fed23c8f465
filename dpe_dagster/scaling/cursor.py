"""The autoscaler sensor's cursor: what it remembers between ticks (each live node's memory, the
pools' scale-up arrivals, the pools whose last tick failed, when each pool was last looked at), as
JSON, and reading it back from the instance, where the daemon stores every sensor's cursor (for
reports, the health check and `dpe metrics`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from dpe_dagster.pools.base import Node
from dpe_dagster.scaling.activity import PoolArrivals

AUTOSCALER_SENSOR = "dpe_autoscaler"
NODE_MEMORY_VERSION = 1  # the "version" of the mapping `NodeMemory.to_json` writes
# A positional list is read as these fields in this order; it holds the first 3, 7, 10 or all 12.
POSITIONAL_FIELDS = ("idle_since", "busy_seconds", "last_seen", "launched_at", "lifecycle", "instance_type", "zone",
                     "unknown_since", "unknown_seconds", "not_ready_since", "interrupted", "interrupted_at")
POSITIONAL_LENGTHS = (3, 7, 10, 12)


@dataclass
class NodeMemory:
    """What the control loop has seen of one node; lives in the sensor cursor, so it survives
    restarts. Losing it only delays a scale-down (idle time restarts from the next tick).

    It also keeps what the ledger needs to charge the node if it disappears without the loop
    removing it (a spot interruption, or a scale-down whose process died after terminating the
    instance and before writing its record): see `control.vanished`."""

    idle_since: float | None = None
    busy_seconds: float = 0.0
    last_seen: float | None = None
    launched_at: float | None = None
    lifecycle: str = "on-demand"
    instance_type: str = "unknown"
    zone: str = ""
    # Since when the provider cannot tell whether the node is busy (None: it can), and how long in
    # all it was kept while it could not: the ledger says why such a node was paid for.
    unknown_since: float | None = None
    unknown_seconds: float = 0.0
    not_ready_since: float | None = None  # since when the node is not running (None: it is)
    # Node.interrupted / interrupted_at as last seen: the instance's mark goes with it.
    interrupted: str = ""
    interrupted_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A mapping of the fields by name, with "version": `NODE_MEMORY_VERSION`."""
        return {"version": NODE_MEMORY_VERSION, **dataclasses.asdict(self),
                "busy_seconds": round(self.busy_seconds, 3), "unknown_seconds": round(self.unknown_seconds, 3)}

    @classmethod
    def from_json(cls, raw: Any) -> "NodeMemory":
        """Reads what `to_json` writes, and a positional list (see `POSITIONAL_FIELDS`); a field
        either leaves out keeps its default."""
        names = [f.name for f in dataclasses.fields(cls)]
        if isinstance(raw, list):
            if len(raw) not in POSITIONAL_LENGTHS:
                raise ValueError(f"node memory: a positional list holds {', '.join(map(str, POSITIONAL_LENGTHS))} "
                                 f"fields, not {len(raw)}")
            values = dict(zip(POSITIONAL_FIELDS, raw))
        elif isinstance(raw, dict):
            values = dict(raw)
            version = values.pop("version", None)
            if version != NODE_MEMORY_VERSION:
                raise ValueError(f"node memory: field 'version' is {version!r}; allowed: {NODE_MEMORY_VERSION}")
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"node memory: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        else:
            raise ValueError(f"node memory: {raw!r} is neither a mapping of fields nor a positional list")
        mem = cls(**values)
        mem.busy_seconds, mem.unknown_seconds = float(mem.busy_seconds), float(mem.unknown_seconds)
        return mem


def observe(nodes: list[Node], memory: dict[str, NodeMemory], now: float) -> dict[str, NodeMemory]:
    """Fold this tick's view of the nodes into what was seen before. Every tick runs this for
    every node: a busy node's path, the commonest, comes first, and clears no field already clear."""
    seen = {}
    recall = memory.get
    for node in nodes:
        node_id = node.id
        known = recall(node_id)
        mem = NodeMemory(last_seen=None) if known is None else known
        last_seen = mem.last_seen
        if node.busy and node.busy_known:
            if mem.unknown_since is not None:
                mem.unknown_since = None
            if last_seen is not None and now > last_seen:
                mem.busy_seconds += now - last_seen
            if mem.idle_since is not None:
                mem.idle_since = None
        elif not node.busy_known:
            if mem.unknown_since is None:
                mem.unknown_since = now
            elif last_seen is not None:
                mem.unknown_seconds += max(0.0, now - last_seen)
            mem.idle_since = None  # it may have worked meanwhile: idle time starts again once known
        else:
            mem.unknown_since = None
            if mem.idle_since is None:
                # Counted from the first tick that sees it idle: it may have been idle a little
                # longer, never shorter, so the idle timeout is never cut short.
                mem.idle_since = now
        if node.state == "running":
            if mem.not_ready_since is not None:
                mem.not_ready_since = None
        elif mem.not_ready_since is None:
            # A node first seen not ready has been so since its launch (never later than now: the cloud
            # may not list a new instance's launch time yet); one seen ready before, since now.
            mem.not_ready_since = min(node.launched_at, now) if known is None else now
        mem.last_seen = now
        mem.launched_at, mem.lifecycle, mem.instance_type, mem.zone = (
            node.launched_at, node.lifecycle, node.instance_type, node.zone)
        if node.interrupted:
            mem.interrupted, mem.interrupted_at = node.interrupted, node.interrupted_at
        seen[node_id] = mem
    return seen


def load_cursor(cursor: str | None) -> dict[str, dict[str, NodeMemory]]:
    raw = json.loads(cursor) if cursor else {}
    out: dict[str, dict[str, NodeMemory]] = {}
    for pool, nodes in raw.get("nodes", {}).items():
        out[pool] = {}
        for node_id, mem in nodes.items():
            try:
                out[pool][node_id] = NodeMemory.from_json(mem)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{AUTOSCALER_SENSOR} cursor, pool {pool}, node {node_id}: {error}") from None
    return out


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
