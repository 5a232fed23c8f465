"""Which of Dagster's runs hold room on a pool: the autoscaler sizes pools for them, and the ledger
charges them alongside the runs that ended within a window."""

from dagster import DagsterRunStatus

ACTIVE_STATUSES = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
