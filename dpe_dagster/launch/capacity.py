"""What every dpe run launcher does before it starts a run: place it on its pool (or that pool's
fallback) and ask for room at once, so scale-up does not wait for the sensor's next tick."""

from __future__ import annotations

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.config import Environment
from dpe_dagster.launch.pool_choice import place_on_pool
from dpe_dagster.tags import TagError


def ask_for_capacity(instance: DagsterInstance, run: DagsterRun, env: Environment) -> bool:
    """Returns False (and fails the run with a message that names the tag and what is allowed)
    when the run's dpe tags are unusable; such a run is never started and nothing is scaled."""
    try:
        place_on_pool(instance, env, run)
    except TagError as error:
        instance.report_run_failed(run, message=f"dpe cannot place this run: {error}")
        return False
    return True
