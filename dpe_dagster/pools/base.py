"""The cloud-agnostic node pool: what the policy needs from any provider, nothing more.

Modelled on Cluster Autoscaler's `NodeGroup` (TargetSize, IncreaseSize, DeleteNodes, Nodes). The
provider is the source of truth for sizes and nodes; dpe keeps no shadow copy that could drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from dpe_dagster.errors import PoolError as PoolError  # every provider raises it; re-exported here

if TYPE_CHECKING:
    from dpe_dagster.config import PoolConfig

PENDING = "pending"  # asked for, not yet able to take work
RUNNING = "running"
NODE_STATES = (PENDING, RUNNING)
# Why the cloud is taking a node away, once it said so (its provider's warnings): the node is cordoned.
SPOT_INTERRUPTION = "spot-interruption"  # reclaimed two minutes after the warning
REBALANCE_RECOMMENDATION = "rebalance-recommendation"  # at raised risk of it
INTERRUPTIONS = (SPOT_INTERRUPTION, REBALANCE_RECOMMENDATION)

# Why a node left the pool (the plan's `removed_because`, the ledger's `NodeLifetime.removed_because`).
REMOVED_IDLE = "idle"  # idle for its idle timeout
REMOVED_BOOT_TIMEOUT = "boot timeout"  # not ready (not joined, cordoned by someone) for its boot timeout
REMOVED_BUSY_UNKNOWN = "busy unknown"  # busy status unknown for its idle timeout plus the grace
REMOVED_VANISHED = "vanished"  # gone without dpe removing it (a spot reclaim, a crash mid-removal)
REMOVED_INTERRUPTED = "interrupted"  # idle once the cloud warned it would take the node (it is cordoned)


@dataclass(frozen=True)
class Node:
    id: str
    state: str
    launched_at: float  # unix seconds
    busy: bool  # runs work that must not be interrupted; True too when the provider cannot tell
    lifecycle: str = "on-demand"
    instance_type: str = "local"
    zone: str = "local"
    # False when the provider could not tell whether the node is busy (its Spark master or the
    # Kubernetes API did not answer): `busy` is then True, so nothing treats it as idle, and the
    # policy keeps it only for a bounded grace (see `PoolConfig.unknown_busy_grace_s`).
    busy_known: bool = True
    # One of INTERRUPTIONS once the cloud warned about the node, and when (unix s): it takes no new work.
    interrupted: str = ""
    interrupted_at: float | None = None


@runtime_checkable
class NodePool(Protocol):
    """What dpe calls on a provider's pool. Its optional part (`PoolCapabilities` below) has
    defaults; a provider's pool subclasses it, or `SafeRemoval` (pools/removal.py) and
    `MarkedHealth` (pools/health.py), which implement `remove_nodes` and the health part once."""

    name: str
    config: PoolConfig

    def target(self) -> int:
        """The size the pool is asked to reach (nodes pending count towards it)."""

    def set_target(self, size: int) -> None:
        """Grow the pool to `size`, or lower it to withdraw capacity asked for that has no node
        yet (never below the nodes that exist). Removing nodes goes through `remove_nodes`, so
        that the caller, not the provider, chooses which nodes go, and a busy node is never
        picked blindly."""

    def nodes(self) -> list[Node]:
        """Every node that exists now, pending or running."""

    def remove_nodes(self, node_ids: Sequence[str], stuck: Sequence[str] = ()) -> None:
        """Remove these nodes and lower the target by as many. Refuses a busy node (PoolError),
        and one whose busy status it cannot tell at the last moment unless it is in `stuck`: nodes
        removed because they were not ready within the boot timeout or stayed unknown too long
        (see `policy.stuck_nodes`); where the group cannot shrink (its minimum), they are replaced."""

    def run_nodes(self) -> dict[str, str]:
        """Dagster run id -> id of the node of this pool that the run holds now, for the runs that
        hold one (as the provider's own source of placement sees them). A run that holds room on
        several nodes maps to the one where it holds the most. The policy packs waiting runs into
        the room really left on each node instead of repacking every run from scratch."""

    # The optional part, as PoolCapabilities documents it.
    def scale_up_health(self, now: float | None = None) -> ScaleUpHealth | None: ...

    def backoff(self, now: float | None = None) -> str | None: ...

    def back_off(self, reason: str, now: float | None = None) -> None: ...

    def shutdown(self) -> None: ...

    def stranded_pods(self) -> list[tuple[str, float, float]]: ...


@dataclass(frozen=True)
class Price:
    """What one node costs per hour, and where that figure comes from (`usage/pricing.py`)."""

    usd_per_hour: float
    source: str


@dataclass(frozen=True)
class ScaleUpHealth:
    """Whether capacity asked for has arrived; `overdue` with a reason when it has not in time."""

    overdue: bool
    reason: str
    desired: int
    running: int


class PoolCapabilities:
    """The optional part of a provider's pool, with the defaults of a pool that lacks it: no
    scale-up health to watch (always worth asking), no back-off, nothing to stop on shutdown.
    Pools subclass it and override what they have."""

    def scale_up_health(self, now: float | None = None) -> ScaleUpHealth | None:
        """Whether the last scale-up is arriving; None when the provider cannot tell."""
        return None

    def backoff(self, now: float | None = None) -> str | None:
        """Why the pool must not be asked for capacity now (it is backed off), or None."""
        return None

    def back_off(self, reason: str, now: float | None = None) -> None:
        """Stop asking this pool for a while (its scale-ups do not arrive)."""

    def shutdown(self) -> None:
        """Stop what the pool runs on this machine (nothing, for a cloud's pool)."""

    def stranded_pods(self) -> list[tuple[str, float, float]]:
        """Pods of this pool that its cluster's scheduler found no room for on its nodes, though
        they fit an empty node (id, CPUs, GB): each asks for a node of its own. Empty for a pool
        whose work no scheduler places."""
        return []
