"""Placing a run or a container on a pool that can take it: its own pool, or that pool's fallback
when the pool's capacity does not come (a scale-up overdue past the boot timeout, a failed scaling activity, an
API error that outlasts the cloud SDK's retries).

Falling back re-tags the run (`dpe/node_pool` becomes the fallback pool, `dpe/requested_pool`
keeps what the run asked for), so that everything downstream follows one source of truth: the
demand the sensor reads, the pod's node selector, and the ledger, which then charges the fallback
pool's price. Every decision is written into the run's event log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun

from dpe_dagster.config import Environment, PoolConfig
from dpe_dagster.pools import NodePool, open_pool
from dpe_dagster.errors import PoolBusy
from dpe_dagster.pools.base import PoolError
from dpe_dagster.scaling.control import request_capacity
from dpe_dagster.scaling.policy import Plan
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


def _back_off(pool: NodePool | None, reason: str) -> None:
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


@dataclass(frozen=True)
class AskedPool:
    """The pool an ask along a fallback chain reached: the pool asked and its plan, or none (pool None)
    with, per pool of the chain, why it could not be asked."""

    pool: str | None
    plan: Plan | None
    reasons: tuple[str, ...]


def ask_along_chain(instance: DagsterInstance, env: Environment, chain: Sequence[str], what: str,
                    log: Callable[[str], None], *, skip: Callable[[PoolConfig], str | None] = lambda pool: None,
                    before_asking: Callable[[str], None] = lambda name: None) -> AskedPool:
    """The one fallback loop: ask the first pool of `chain` that can be asked for room now (under
    its pool lock, `request_capacity`). A pool is passed over when `skip` gives a reason, when it is
    backed off or its scale-ups do not arrive (`pool_unavailable`), or when asking fails (which
    backs it off), except when the pool is only busy with another activity (`PoolBusy`): the ask
    then stays on it, unanswered, for the autoscaler's next tick. `before_asking(name)` records where the `what` (a run, a container) goes, just
    before its pool is asked, so the ask and the demand the autoscaler reads agree."""
    reasons = []
    for position, name in enumerate(chain):
        reason = skip(env.pool(name))
        pool = None
        if reason is None:
            pool = open_pool(env.pool(name), env)
            try:
                reason = pool_unavailable(pool)
            except PoolError as error:
                reason = str(error)
        if reason is None:
            before_asking(name)
            try:
                return AskedPool(name, request_capacity(instance, env, name, log), tuple(reasons))
            except PoolBusy as error:
                # Not a capacity problem: the run stays on this pool, the autoscaler asks again.
                log(f"dpe: pool {name} is busy with another scaling activity ({error}); the {what} stays on it and "
                    "the autoscaler asks again at its next tick")
                return AskedPool(name, None, tuple(reasons))
            except PoolError as error:
                reason = f"asking for capacity failed: {error}"
                _back_off(pool, reason)
        following = chain[position + 1] if position + 1 < len(chain) else None
        log(f"dpe: pool {name} cannot take this {what} now: {reason}"
            + (f"; placing it on fallback pool {following}" if following else ""))
        reasons.append(f"{name}: {reason}")
    return AskedPool(None, None, tuple(reasons))


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
    def move_run(name: str) -> None:
        nonlocal current
        if name != current:
            instance.add_run_tags(run.run_id, {POOL_TAG: name, REQUESTED_POOL_TAG: requested})
            current = name

    asked = ask_along_chain(instance, env, chain, "run", say, before_asking=move_run)
    if asked.pool is not None:
        return asked.pool
    # No pool in the chain can take it now: the run stays on the pool it asked for and waits;
    # the sensor keeps asking every tick.
    if current != requested:
        instance.add_run_tags(run.run_id, {POOL_TAG: requested})
    say(f"dpe: no pool of {', '.join(fallback_chain(env, requested))} can take this run now; it waits for {requested}")
    return requested
