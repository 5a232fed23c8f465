"""Placing a run on a pool that can take it: its own pool, or that pool's fallback when the pool's
capacity does not come (a scale-up overdue past the boot timeout, a failed scaling activity, an
API error that outlasts botocore's retries).

Falling back re-tags the run (`dpe/node_pool` becomes the fallback pool, `dpe/requested_pool`
keeps what the run asked for), so that everything downstream follows one source of truth: the
demand the sensor reads, the pod's node selector, and the ledger, which then charges the fallback
pool's price. Every decision is written into the run's event log.
"""

from __future__ import annotations

import time
from typing import Callable

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.config import Environment
from dpe_dagster.pools import NodePool, open_pool
from dpe_dagster.pools.base import PoolError
from dpe_dagster.scaling.control import request_capacity
from dpe_dagster.tags import POOL_TAG, REQUESTED_POOL_TAG, RETRY_NUMBER_TAG, pool_request



def pool_unavailable(pool: NodePool, now: float | None = None) -> str | None:
    """Why this pool should not be asked for capacity now, or None. Providers without scale-up
    health (the local pool) are always available; an overdue scale-up starts a back-off."""
    now = time.time() if now is None else now
    reason = pool.backoff(now)
    if reason:
        return reason
    health = pool.scale_up_health(now)
    if health is not None and health.overdue:
        pool.back_off(health.reason, now)
        return f"scale-up did not arrive ({health.reason}); backing off"
    return None


def _back_off(pool: NodePool, reason: str) -> None:
    try:
        pool.back_off(reason)
    except PoolError:
        pass  # the API that failed may fail again; the next launch re-checks


def _is_retry(run: DagsterRun) -> bool:
    try:
        return int(run.tags.get(RETRY_NUMBER_TAG, "0")) > 0
    except ValueError:
        return False


def fallback_chain(env: Environment, first: str) -> list[str]:
    chain = [first]
    while env.pool(chain[-1]).fallback and env.pool(chain[-1]).fallback not in chain:
        chain.append(env.pool(chain[-1]).fallback)
    return chain


def place_on_pool(instance: DagsterInstance, env: Environment, run: DagsterRun,
              log: Callable[[str], None] | None = None) -> str | None:
    """Ask the run's pool (or its fallback) for capacity now; return the pool the run is placed on,
    None for a run that names no pool. Raises TagError for unusable dpe tags."""
    request = pool_request(run.tags, env)
    if request is None:
        return None
    say = log or (lambda message: instance.report_engine_event(message, run))
    requested = run.tags.get(REQUESTED_POOL_TAG, request.pool)
    current = request.pool
    chain = fallback_chain(env, requested)
    if _is_retry(run) and len(chain) > 1:
        # A retry of a run whose pool has a fallback starts on the fallback: the attempt on the
        # pool failed, and on a spot pool the likeliest cause is an interruption that a retry on
        # the same pool would meet again (spot loss fails over through Dagster's run retries).
        say(f"dpe: retry {run.tags[RETRY_NUMBER_TAG]} of a run on pool {requested}: placing it on fallback pool {chain[1]}")
        chain = chain[1:]
    for name in chain:
        pool = open_pool(env.pool(name), env)
        try:
            reason = pool_unavailable(pool)
        except PoolError as error:
            reason = str(error)
        if reason is None:
            if name != current:
                instance.add_run_tags(run.run_id, {POOL_TAG: name, REQUESTED_POOL_TAG: requested})
                current = name
            try:
                request_capacity(instance, env, name, say)
                return name
            except PoolError as error:
                reason = f"asking for capacity failed: {error}"
                _back_off(pool, reason)
        fallback = env.pool(name).fallback
        say(f"dpe: pool {name} cannot take this run now: {reason}"
            + (f"; placing it on fallback pool {fallback}" if fallback and fallback != requested else ""))
    # No pool in the chain can take it now: the run stays on the pool it asked for and waits;
    # the sensor keeps asking every tick.
    if current != requested:
        instance.add_run_tags(run.run_id, {POOL_TAG: requested})
    say(f"dpe: no pool of {', '.join(fallback_chain(env, requested))} can take this run now; it waits for {requested}")
    return requested
