"""The Dagster instance folder for a dpe environment: its `dagster.yaml`, written from the
environment, so the instance and the environment never disagree."""

from __future__ import annotations

from pathlib import Path

import yaml

from dpe_dagster.config import Environment
from dpe_dagster.tags import HOLD_TAG
from dpe_dagster.usage.budget import BUDGET_HOLD


def start_timeout_s(env: Environment) -> int:
    """How long a run may stay STARTING: two boot timeouts (the pool's, then its fallback's) and
    two minutes to start the run worker, at least five minutes."""
    boot = max((pool.boot_timeout_s for pool in env.pools.values()), default=0)
    return int(max(300, 2 * boot + 120))


def config_of(env: Environment) -> dict:
    """How the launcher and the coordinator in the daemon load the same configuration."""
    return {"config": env.source} if env.source else {"environment": env.name}


def instance_config(env: Environment) -> dict:
    return {
        # Dagster's queue; the run's pool is asked for room the moment a run is queued.
        "run_coordinator": {
            "module": "dpe_dagster.launch.coordinator",
            "class": "PoolRunCoordinator",
            "config": {
                **config_of(env),
                "max_concurrent_runs": env.max_concurrent_runs,
                "dequeue_interval_seconds": 1,
                # A pool over its daily budget holds its queued runs here (see usage/budget.py).
                "tag_concurrency_limits": [{"key": HOLD_TAG, "value": BUDGET_HOLD, "limit": 0}],
            },
        },
        "run_launcher": {
            "module": "dpe_dagster.launch.local",
            "class": "PoolRunLauncher",
            "config": config_of(env),
        },
        # A run whose node disappears (a spot interruption) dies with its run worker: Dagster
        # retries it once, and placement puts the retry on the pool's fallback. A failing step is
        # the code's fault, not the node's: it is not retried.
        "run_retries": {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False},
        # A daemon killed in the middle of launching a run (after the scale-up, before the run worker
        # started) leaves the run STARTING: run monitoring fails it after the start timeout and the
        # retry above runs it again. The timeout leaves room for a node to boot and for the fallback.
        "run_monitoring": {"enabled": True, "start_timeout_seconds": start_timeout_s(env),
                           "poll_interval_seconds": 30},
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "sensors": {"use_threads": True, "num_workers": 2},
    }


def write_instance(home: Path, env: Environment, extra: dict | None = None) -> Path:
    """Write `dagster.yaml` into `home` (created if missing); `extra` overrides sections, e.g.
    PostgreSQL storage."""
    home.mkdir(parents=True, exist_ok=True)
    config = instance_config(env)
    config.update(extra or {})
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Create the storage now, from one process: a daemon and a CLI that both find it missing
    # race to create SQLite's tables ("more than one head" from its migrations).
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs_count()
    return path
