"""Dagster's run queue, plus a scale-up request for the run's pool the moment the run is queued.

Demand appears when a run is submitted, not when the queue hands it to the launcher: waiting for
the dequeue (whole seconds in Dagster) would be most of dpe's reaction time (bench/RESULTS.md,
"1. Reaction latency: run enqueued -> scale-up call received by the cloud API"). The
launcher still places the run and asks again at dequeue (a no-op when the pool already grew), so
nothing depends on this early request: if it fails, the run is queued all the same.

A local pool is not asked here: its scale-up starts Spark processes, which should not happen in
whatever process submitted the run (the UI, a sensor, the CLI); the launcher starts them a second
later."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._serdes import ConfigurableClassData

from dpe_dagster.environment import CONFIG_FIELDS, load_environment
from dpe_dagster.tags import POOL_TAG

log = logging.getLogger(__name__)


class PoolRunCoordinator(QueuedRunCoordinator):
    _config: str | None = None
    _environment: str | None = None

    @classmethod
    def config_type(cls):
        return {**QueuedRunCoordinator.config_type(), **CONFIG_FIELDS}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        coordinator = super().from_config_value(
            inst_data, {key: value for key, value in config_value.items() if key not in CONFIG_FIELDS})
        coordinator._config = config_value.get("config")
        coordinator._environment = config_value.get("environment")
        return coordinator

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = super().submit_run(context)
        pool_name = run.tags.get(POOL_TAG)
        if pool_name and run.status == DagsterRunStatus.QUEUED:
            try:
                from dpe_dagster.scaling.control import request_capacity

                env = load_environment(self._config, name=self._environment)
                from dpe_dagster.providers import provider

                if pool_name in env.pools and not provider(env.pool(pool_name).provider).starts_processes_here:
                    request_capacity(self._instance, env, pool_name)
            except Exception as error:  # noqa: BLE001 - the launcher asks again at dequeue
                log.warning("dpe: early scale-up for run %s on pool %s failed (the launcher will ask again): %s",
                            run.run_id, pool_name, error)
        return run
