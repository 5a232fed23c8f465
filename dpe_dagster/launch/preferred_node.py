"""Which node of its pool a run's pod should prefer, for pools with `placement: ending-together`.
Pure: no I/O, no client; the k8s run launcher gathers what it needs and asks here.

The simulator places every waiting run with `place_run` (scaling/policy.py): on the node whose
paid time the run lengthens least, by expected ends, so that runs ending together share nodes and
the others empty whole and can be removed. In production the Kubernetes scheduler places pods, so
this module makes the same choice from the provider's nodes and the runs that hold them, and the
launcher hands it to the scheduler as a preferred node (see `pod_spec.preferred_node_affinity`).
"""

from __future__ import annotations

from typing import Sequence

from dpe_dagster.config import PoolConfig
from dpe_dagster.pools.base import RUNNING, Node
from dpe_dagster.scaling.policy import NodeRoom, RunDemand, place_run

ENDING_TOGETHER = "ending-together"


def node_rooms(pool: PoolConfig, nodes: Sequence[Node], holding: Sequence[RunDemand]) -> list[NodeRoom]:
    """The pool's running nodes as `place_run` sees them, oldest first (`place_run` breaks ties
    by age). Room is the node shape minus what the runs holding the node asked; `busy_until` is
    the latest expected end among them. A run with no expected end adds no end, as in the
    simulator: nothing is known of it, so the node is not taken to outlive the others for it.
    Pending nodes are left out: no pod lands on a node before it joins the cluster, and a run
    that fits on no running node is what the pool grows for."""
    running = sorted((node for node in nodes if node.state == RUNNING), key=lambda node: (node.launched_at, node.id))
    used: dict[str, list[float]] = {node.id: [0.0, 0.0] for node in running}
    ends: dict[str, float] = {}
    for run in holding:
        if run.node_id not in used:
            continue  # waiting, or on a node that is gone or not ready
        used[run.node_id][0] += run.cpus
        used[run.node_id][1] += run.memory_gb
        if run.expected_end is not None:
            ends[run.node_id] = max(run.expected_end, ends.get(run.node_id, run.expected_end))
    return [NodeRoom(node.id, pool.room_cpus - used[node.id][0], pool.room_memory_gb - used[node.id][1],
                     ends.get(node.id)) for node in running]


def preferred_node(pool: PoolConfig, nodes: Sequence[Node], active_runs: Sequence[RunDemand],
                   run: RunDemand, now: float) -> str | None:
    """The id of the node `run` should go to on `pool`, or None to leave the choice to the
    Kubernetes scheduler: always for `first-fit` pools, and when no running node has room.

    `nodes`: the pool's nodes as its provider lists them. `active_runs`: the pool's active runs
    (`node_id` = the node a run holds, `expected_end` = when it should end); the run itself may be
    among them and is not counted against any node's room. `run`: the run being launched, with its
    requests and expected end."""
    if pool.placement != ENDING_TOGETHER:
        return None
    holding = [other for other in active_runs if other.run_id != run.run_id]
    return place_run(run, node_rooms(pool, nodes, holding), now)
