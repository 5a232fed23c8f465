"""The `dagster_runs` busy source of an Auto Scaling group pool: for groups whose instances run no
work of their own (the aws-sim emulator's), an instance is busy while a run is placed on it in a
model of placement: the pool's STARTING/STARTED runs packed first fit, largest first
(`dpe_dagster.packing`), onto the serving instances, oldest first."""

from __future__ import annotations

import functools
from typing import Sequence

from dpe_dagster import packing
from dpe_dagster.config import PoolConfig


def busy_from_dagster_runs(pool: PoolConfig, instances: Sequence, instance=None) -> dict[str, tuple[bool, bool]]:
    """instance id -> (serving, busy): an instance that holds a run in `runs_on_instances` is busy."""
    serving = {i.id for i in instances if _serving(i)}
    holding = {node_id for held in _modelled_placement(pool, instances, instance).values() for node_id in held}
    return {i.id: (i.id in serving, i.id in holding) for i in instances}


def runs_on_instances(pool: PoolConfig, instances: Sequence, instance=None) -> dict[str, str]:
    """Dagster run id -> the instance the run occupies in the model (the runs execute elsewhere).
    A run larger than one node takes whole free nodes and maps to the first of them."""
    return {run_id: held[0] for run_id, held in _modelled_placement(pool, instances, instance).items()}


def _modelled_placement(pool: PoolConfig, instances: Sequence, instance=None) -> dict[str, list[str]]:
    """Run id -> the instances it occupies in the model (see `runs_on_instances`)."""
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
    # A warned instance first: the run it held keeps it in the model, not moved onto its replacement
    # (launch times tie at one-second resolution).
    serving = sorted((i for i in instances if _serving(i)), key=lambda i: (not i.interrupted[0], i.launched_at, i.id))
    return packing.first_fit_decreasing(requests, [i.id for i in serving], pool.room_cpus, pool.room_memory_gb)


def _serving(inst) -> bool:
    return inst.lifecycle_state == "InService" and inst.ec2_state == "running"


@functools.lru_cache(maxsize=4)
def _dagster_instance(home: str):
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    return DagsterInstance.from_ref(InstanceRef.from_dir(home))
