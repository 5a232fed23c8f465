"""What the ledger stores: one `UsageRecord` per ended run, one `NodeLifetime` per removed node.

Both travel as Dagster asset-observation metadata, shown as a person reads them (`shown`): times
as dates, money and durations rounded, and numbers stay numbers so the UI can plot them. What the
rounding changes is kept exactly in the record's `exact` entry, which the readers read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from dagster import AssetKey, MetadataValue

RUN_USAGE_KEY = AssetKey(["dpe", "run_usage"])
NODE_USAGE_KEY = AssetKey(["dpe", "node_usage"])
POD_USAGE_KEY = AssetKey(["dpe", "pod_usage"])  # a container pod's record (pods.py)
# The metadata dpe writes on materializations. Per-asset attribution, written on each asset the
# run materialized:
ASSET_COST = "dpe/cost_usd"
ASSET_NODE_SECONDS = "dpe/node_seconds"
ASSET_RUN_ID = "dpe/run_id"
ASSET_POOL = "dpe/pool"  # the pool it ran on
ASSET_TEAM = "dpe/team"
ASSET_COST_BASIS = "dpe/cost_basis"  # how the cost was found (an estimate, or measured)
ASSET_POD = "dpe/pod"  # the pod of a container asset
UNASSIGNED = "unassigned"  # the team of a record no team owns
EXACT = "exact"  # a record's metadata entry: the values it shows rounded, at full precision


def digits(name: str) -> int:
    """The decimals a number is shown with, by its name: money (`*_usd`, prices) to a millionth
    of a dollar, as `dpe usage` prints it (a small run costs a fraction of a cent), durations
    (`*_seconds`) to a tenth of a second, anything else (shares, CPUs, GB) to 4."""
    if name.endswith("_usd") or name.startswith("price"):
        return 6
    if name.endswith("_seconds"):
        return 1
    return 4


def rounded(name: str, value: Any) -> Any:
    """`value` with every number in it rounded by its name (`digits`); in a JSON value, a number
    goes by its own key."""
    if isinstance(value, Mapping):
        return {k: rounded(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(name, v) for v in value]
    if isinstance(value, float):
        return round(value, digits(name))
    return value


def shown(name: str, value: float | list | dict) -> MetadataValue:
    """A number or JSON value as the Dagster UI shows it: a time (`*_at`, unix seconds) as a date,
    anything else rounded (`rounded`), numbers still numbers, so the asset page plots them."""
    if isinstance(value, (list, dict)):
        return MetadataValue.json(rounded(name, value))
    if name.endswith("_at"):
        return MetadataValue.timestamp(value)
    return MetadataValue.float(rounded(name, float(value)))


def cost_of(node_seconds: float, price_per_node_hour: float) -> float:
    return node_seconds / 3600.0 * price_per_node_hour


def iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class UsageRecord:
    run_id: str
    job_name: str
    pool: str
    team: str
    status: str
    cpus: float
    memory_gb: float
    node_share: float  # nodes of the pool's shape that the run's requests occupy
    node_seconds: float  # node-seconds charged to the run (its share of the nodes alive)
    price_per_node_hour: float  # what those node-seconds cost on average
    price_source: str  # where the price came from (see usage/pricing.py)
    cost_usd: float
    started_at: float | None
    ended_at: float | None
    lifecycle: str
    assets: tuple[str, ...] = ()
    # Per asset: {"cost_usd", "node_seconds", "team"}; the run's cost split by step time.
    asset_costs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # The nodes the run ran on (alive during it): {"node_id", "instance_type", "lifecycle", "zone"};
    # empty in records written before runs named their nodes.
    nodes: tuple[Mapping[str, str], ...] = ()

    def to_metadata(self) -> dict[str, Any]:
        return to_metadata(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "UsageRecord":
        return from_metadata(cls, metadata)

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["assets"] = list(self.assets)
        out["asset_costs"] = {k: dict(v) for k, v in self.asset_costs.items()}
        out["nodes"] = [dict(n) for n in self.nodes]
        out["started_at"] = iso(self.started_at) or None
        out["ended_at"] = iso(self.ended_at) or None
        return out


@dataclass(frozen=True)
class NodeLifetime:
    node_id: str
    pool: str
    lifecycle: str
    instance_type: str
    launched_at: float
    removed_at: float
    busy_seconds: float
    price_per_node_hour: float
    price_source: str = "config"
    # Why it was removed: "idle", "boot timeout", "busy unknown", "vanished" ("": the record
    # does not say); and how long it was kept only because its busy status could not be told.
    removed_because: str = ""
    unknown_seconds: float = 0.0
    # Node.interrupted when the node went ("": it was not), and when the cloud warned (unix s).
    interrupted: str = ""
    interrupted_at: float | None = None

    @property
    def lifetime_seconds(self) -> float:
        return max(0.0, self.removed_at - self.launched_at)

    @property
    def idle_seconds(self) -> float:
        return max(0.0, self.lifetime_seconds - self.busy_seconds)

    @property
    def cost_usd(self) -> float:
        return cost_of(self.lifetime_seconds, self.price_per_node_hour)

    def to_metadata(self) -> dict[str, Any]:
        metadata = to_metadata(self)
        for name in ("lifetime_seconds", "idle_seconds", "cost_usd"):
            metadata[name] = shown(name, getattr(self, name))
        return metadata

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "NodeLifetime":
        return from_metadata(cls, metadata)


def to_metadata(record: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    exact: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, tuple):
            value = [dict(v) if isinstance(v, Mapping) else v for v in value]
        elif isinstance(value, Mapping):
            value = {k: dict(v) for k, v in value.items()}
        elif isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, (float, list, dict)):
            metadata[f.name] = shown(f.name, value)
            if metadata[f.name].value != value:
                exact[f.name] = value
        elif value is None:
            metadata[f.name] = MetadataValue.null()
        else:
            metadata[f.name] = MetadataValue.text(str(value))
    if exact:
        metadata[EXACT] = MetadataValue.json(exact)
    return metadata


def from_metadata(cls: type, metadata: Mapping[str, Any]) -> Any:
    """The record `to_metadata` wrote, what it rounded read from `exact`. Metadata without
    `exact`, or with times as plain numbers, reads the same way."""
    exact = getattr(metadata.get(EXACT), "value", None) or {}
    values = {}
    for f in dataclasses.fields(cls):
        raw = metadata.get(f.name)
        value = exact.get(f.name, getattr(raw, "value", raw))
        if f.name == "assets":
            value = tuple(value or ())
        elif f.name == "nodes" and cls is UsageRecord:
            value = tuple(dict(n) for n in value or ())
        elif f.name == "asset_costs":
            value = dict(value or {})
        elif raw is None and f.default is not dataclasses.MISSING:
            value = f.default
        values[f.name] = value
    return cls(**values)
