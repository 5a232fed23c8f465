"""The errors dpe raises on purpose: bad configuration, and a provider that could not do what it
was asked (`dpe_dagster.config` and `dpe_dagster.pools.base` re-export them)."""


class ConfigError(ValueError):
    """A configuration value is missing or not allowed; the message names the field."""


class PoolError(RuntimeError):
    """A provider could not do what it was asked; the message says what and why.

    The one rule for failures in the sensors (autoscaler and usage ledger): a provider wraps its
    SDK's and its processes' errors as PoolError where it calls them, and a sensor that gets a
    PoolError from one pool logs it naming the pool, keeps that pool's cursor and memory for a
    later tick, and goes on with the other pools. Any other exception is a bug or a failure of the
    Dagster instance itself (storage, locks): it fails the tick, so Dagster shows it and no cursor
    moves past work that was not done."""


class PoolBusy(PoolError):
    """The provider refused for now because the pool is in the middle of something else (another
    scaling activity on the group), after retrying: it says nothing about capacity, so the
    pool is not backed off and the run does not move to a fallback; the next tick asks again."""
