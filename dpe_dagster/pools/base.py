"""The cloud-agnostic node pool: what the policy needs from any provider, nothing more.

Modelled on Cluster Autoscaler's `NodeGroup` (TargetSize, IncreaseSize, DeleteNodes, Nodes). The
provider is the source of truth for sizes and nodes; dpe keeps no shadow copy that could drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

PENDING = "pending"  # asked for, not yet able to take work
RUNNING = "running"
NODE_STATES = (PENDING, RUNNING)


@dataclass(frozen=True)
class Node:
    id: str
    state: str
    launched_at: float  # unix seconds
    busy: bool  # runs work that must not be interrupted
    lifecycle: str = "on-demand"
    instance_type: str = "local"
    zone: str = "local"


class PoolError(RuntimeError):
    """A provider could not do what it was asked; the message says what and why.

    The one rule for failures in the sensors (autoscaler and usage ledger): a provider wraps its
    SDK's and its processes' errors as PoolError where it calls them, and a sensor that gets a
    PoolError from one pool logs it naming the pool, keeps that pool's cursor and memory for a
    later tick, and goes on with the other pools. Any other exception is a bug or a failure of the
    Dagster instance itself (storage, locks): it fails the tick, so Dagster shows it and no cursor
    moves past work that was not done."""


@runtime_checkable
class NodePool(Protocol):
    name: str

    def target(self) -> int:
        """The size the pool is asked to reach (nodes pending count towards it)."""

    def set_target(self, size: int) -> None:
        """Grow the pool to `size`, or lower it to withdraw capacity asked for that has no node
        yet (never below the nodes that exist). Removing nodes goes through `remove_nodes`, so
        that the caller, not the provider, chooses which nodes go, and a busy node is never
        picked blindly."""

    def nodes(self) -> list[Node]:
        """Every node that exists now, pending or running."""

    def remove_nodes(self, node_ids: Sequence[str]) -> None:
        """Remove these nodes and lower the target by as many. Refuses a busy node (PoolError)."""

    def run_nodes(self) -> dict[str, str]:
        """Dagster run id -> id of the node of this pool that the run holds now, for the runs that
        hold one (as the provider's own source of placement sees them). A run that holds room on
        several nodes maps to the one where it holds the most. The policy packs waiting runs into
        the room really left on each node instead of repacking every run from scratch."""
