"""The autoscaler sensor: every tick, plan and apply each pool of the environment.

A pool is sized for its demand: the active runs the run queue would start (`read_demand`), the runs
running schedules start within one boot (`upcoming_demand`) and the runs job backfills in progress
will still submit, as far as the queue would start them (`backfill_demand`)."""

from __future__ import annotations

import time

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools import NodePool, PoolError, look_ahead, open_pool
from dpe_dagster.scaling.activity import PoolArrivals
from dpe_dagster.scaling.backfills import backfill_demand
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.cursor import (AUTOSCALER_SENSOR, dump_cursor, load_arrivals, load_cursor, load_failures,
                                        load_ticks)
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.scaling.health import report_pool_health
from dpe_dagster.scaling.policy import RunDemand
from dpe_dagster.scaling.schedules import SCHEDULER_GRACE_S, look_ahead_s, scheduled_runs, upcoming_runs
from dpe_dagster.usage.pricing import pricer_for

def build_autoscaler_sensor(env: Environment):
    # Provider objects live as long as the sensor (the code location), not one tick: opening one
    # builds cloud SDK clients (two SDK clients, for some), which per pool and per tick
    # would dominate the tick (bench/RESULTS.md, "2. Tick cost at scale"). They hold no state but
    # clients: the provider stays the source of truth, read afresh every tick.
    pools: dict[str, NodePool] = {}

    def pool_for(config: PoolConfig) -> NodePool:
        if config.name not in pools:
            pools[config.name] = open_pool(config, env)
        return pools[config.name]

    def upcoming_demand(context: SensorEvaluationContext, now: float) -> dict[str, list[RunDemand]]:
        """The runs this code location's running schedules start within each pool's look-ahead."""
        if context.repository_def is None or not env.pools:
            return {}
        windows = {name: look_ahead_s(config, env.sensor_interval_s) for name, config in env.pools.items()}
        schedules = scheduled_runs(context.instance, context.repository_def, context.code_location_origin, env,
                                   now, now + max(windows.values()), warn=context.log.warning)
        out: dict[str, list[RunDemand]] = {}
        for name, within in windows.items():
            # From the grace back: a fire whose run Dagster has not created yet is still upcoming.
            out[name] = upcoming_runs([s for s in schedules if s.request.pool == name], now - SCHEDULER_GRACE_S,
                                      within + SCHEDULER_GRACE_S).get(name, [])
        return out

    def backfill_runs(context: SensorEvaluationContext) -> dict[str, list[RunDemand]]:
        """The runs this code location's job backfills in progress will still submit, by pool."""
        if context.repository_def is None:
            return {}
        backfills = backfill_demand(context.instance, context.repository_def, context.code_location_origin, env)
        for backfill_id, problem in backfills.rejected.items():
            context.log.warning(f"backfill {backfill_id}: its runs to come are not counted: {problem}")
        return dict(backfills.by_pool)

    @sensor(
        name=AUTOSCALER_SENSOR,
        minimum_interval_seconds=env.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="dpe: sizes every node pool for the runs that are running or that the run queue would "
        "start now, for the runs running schedules start within one node boot, and for the runs job "
        "backfills in progress will still submit, as far as the run queue would start them "
        f"(environment {env.name}); scales down nodes idle past their pool's idle timeout.",
    )
    def dpe_autoscaler(context: SensorEvaluationContext):
        memory = load_cursor(context.cursor)
        arrivals = load_arrivals(context.cursor)
        now = time.time()
        pools = {name: pool_for(config) for name, config in env.pools.items()}
        look_ahead(pools.values())
        demand = read_demand(context.instance, env, pools, now)
        for run_id, problem in demand.rejected.items():
            context.log.warning(f"run {run_id} asks for nothing: {problem}")
        pricer = pricer_for(env)
        upcoming = upcoming_demand(context, now)
        to_come = backfill_runs(context)
        failures = load_failures(context.cursor)
        ticks = load_ticks(context.cursor)
        reported = {name: f["error"] for name, f in failures.items()}
        summary = []
        for name, config in env.pools.items():
            started = time.perf_counter()
            # Arrivals are real runs only: a scheduled run arrives once, when Dagster queues it.
            arrivals[name] = arrivals.get(name, PoolArrivals()).see(demand.of(name), now)
            activity = arrivals[name].activity(config, now)
            # Pools are independent: one pool's failure (a busy-node race, a group changed outside
            # dpe, an API error past its retries) is logged and recorded, the other pools are still
            # sized, and the failed pool keeps its previous memory for the next tick. Only a
            # PoolError is a pool's failure; anything else fails the tick (the rule: PoolError).
            try:
                if name in demand.failed:
                    raise PoolError(demand.failed[name])
                tick, memory[name] = scale_pool(
                    context.instance, config, pools[name],
                    demand.of(name) + upcoming.get(name, []) + to_come.get(name, []), memory.get(name, {}), now, pricer,
                    fresh_demand=lambda name=name: (read_demand(context.instance, env, {name: pools[name]}, now).of(name)
                                                    + upcoming.get(name, []) + to_come.get(name, [])),
                    activity=activity,
                )
            except PoolError as error:
                context.log.error(f"pool {name}: not sized this tick: {error}")
                failures[name] = {"error": str(error), "at": now, "since": failures.get(name, {}).get("since", now)}
                summary.append(f"{name}: failed: {error}")
                continue
            finally:
                ticks[name] = {"at": now, "duration_s": time.perf_counter() - started}
            failures.pop(name, None)
            if tick.plan.changes(tick.state):
                context.log.info(f"pool {name}: {tick.plan.reason}")
            summary.append(f"{name}: {tick.plan.reason}")
        failures = {name: value for name, value in failures.items() if name in env.pools}
        ticks = {name: value for name, value in ticks.items() if name in env.pools}
        if context.cursor is None or reported != {name: f["error"] for name, f in failures.items()}:
            report_pool_health(context.instance, env, failures)  # the check changes with the set of failures
        context.update_cursor(dump_cursor(memory, arrivals, failures, ticks))
        return SkipReason("; ".join(summary))

    return dpe_autoscaler
