"""The `dagster_runs` busy source, for a pool whose nodes run no work of their own (an emulator's
instances; the runs execute elsewhere): a node is busy while a run is placed on it in a model of
placement: the pool's STARTING/STARTED runs packed first fit, largest first (`dpe_dagster.packing`),
onto the serving nodes, oldest first, a node the cloud warned about first (the run it held keeps it
in the model rather than moving onto its replacement; launch times tie at one-second resolution)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from dpe_dagster import packing
from dpe_dagster.config import PoolConfig


@dataclass(frozen=True)
class ServingNode:
    """A node of the pool that could hold a run in the model."""

    id: str
    launched_at: float
    interrupted: bool = False


def busy_nodes(pool: PoolConfig, serving: Sequence[ServingNode], instance=None) -> set[str]:
    """The serving nodes that hold a run in the model."""
    return {node_id for held in _modelled_placement(pool, serving, instance).values() for node_id in held}


def runs_on_nodes(pool: PoolConfig, serving: Sequence[ServingNode], instance=None) -> dict[str, str]:
    """Dagster run id -> the node the run occupies in the model. A run larger than one node takes
    whole free nodes and maps to the first of them."""
    return {run_id: held[0] for run_id, held in _modelled_placement(pool, serving, instance).items()}


def _modelled_placement(pool: PoolConfig, serving: Sequence[ServingNode], instance=None) -> dict[str, list[str]]:
    """Run id -> the nodes it occupies in the model (see `runs_on_nodes`)."""
    from dagster import DagsterRunStatus, RunsFilter

    from dpe_dagster.paths import dagster_home
    from dpe_dagster.tags import MEMORY_TAG, POOL_TAG, TagError, parse_memory_gb, requested_cpus

    if instance is None:
        instance = _dagster_instance(str(dagster_home()))
    # The pool tag is matched here, not in SQL: a tag filter walks every run that ever carried
    # the tag, so the read grew with history (as in scaling/demand.py); the status filter is indexed.
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]))
    requests = []
    for run in sorted(runs, key=lambda r: r.run_id):
        if run.tags.get(POOL_TAG) != pool.name:
            continue
        try:
            cpus = requested_cpus(run.tags, pool.default_run_cpus)
            memory = parse_memory_gb(run.tags[MEMORY_TAG]) if MEMORY_TAG in run.tags else pool.default_run_memory_gb
        except TagError:
            continue
        requests.append((cpus, memory, run.run_id))
    order = sorted(serving, key=lambda node: (not node.interrupted, node.launched_at, node.id))
    return packing.first_fit_decreasing(requests, [node.id for node in order], pool.room_cpus, pool.room_memory_gb)


@functools.lru_cache(maxsize=4)
def _dagster_instance(home: str):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(home))
