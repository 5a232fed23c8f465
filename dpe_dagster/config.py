"""Environment and node-pool configuration, validated once at load.

Every error names the field (as a dotted path) and what is allowed, so an operator can fix the
environment file without reading this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

LIFECYCLES = ("spot", "on-demand")
# fixed: remove a node idle for idle_timeout_s; auto: the policy decides, never above idle_timeout_s.
IDLE_TIMEOUT_MODES = ("fixed", "auto")
# first-fit: a waiting run goes to the oldest node with room; ending-together: to the node whose
# paid time it lengthens least, by expected ends (scaling/policy.py `place_run`).
PLACEMENTS = ("first-fit", "ending-together")
# The defaults every environment gets unless it says otherwise, chosen by replaying traces through
# the production control loop (bench/RESULTS.md, "Choosing the defaults").
DEFAULT_IDLE_TIMEOUT_MODE = "auto"
DEFAULT_QUEUE_ALLOWANCE_S = 10.0
DEFAULT_PLACEMENT = "first-fit"
# A node whose busy status the provider cannot tell counts as busy, but only for its idle timeout
# plus this long: a failure that hides the truth must not keep paying for nodes forever.
DEFAULT_UNKNOWN_BUSY_GRACE_S = 300.0
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# A pool name is used as a Kubernetes label value, an ASG tag and a file name: keep it to the
# intersection of what all three accept.
POOL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


from dpe_dagster.errors import ConfigError  # noqa: E402  (re-exported: the name users catch)


def _number(where: str, value: Any, *, minimum: float, integer: bool = False, strict: bool = False) -> Any:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ConfigError(f"{where}: must be {kind} {'>' if strict else '>='} {minimum}; got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{where}: must be {kind} {'>' if strict else '>='} {minimum}; got {value!r}")
    return value


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string; got {value!r}")
    return value


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping; got {type(value).__name__}")
    return value


def _reject_unknown(where: str, given: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class PoolConfig:
    """A named group of identical machines and the rules for sizing it."""

    name: str
    provider: str
    min_size: int
    max_size: int
    node_cpus: float
    node_memory_gb: float
    lifecycle: str
    price_per_node_hour: float
    idle_timeout_s: float
    boot_timeout_s: float
    default_run_cpus: float
    default_run_memory_gb: float
    fallback: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    # Provider-specific settings (ports and folders for `local`, the group name for `aws_asg`).
    settings: Mapping[str, Any] = field(default_factory=dict)
    idle_timeout_mode: str = DEFAULT_IDLE_TIMEOUT_MODE
    # Optional: once the pool has paid this much today (UTC), it stops scaling up until tomorrow.
    daily_budget_usd: float | None = None
    placement: str = DEFAULT_PLACEMENT
    # A waiting run may wait this long (never longer than a boot) for room that running runs free
    # by their expected ends, instead of a node being booted for it; 0: always boot at once.
    queue_allowance_s: float = DEFAULT_QUEUE_ALLOWANCE_S
    # A node whose busy status stays unknown longer than idle_timeout_s plus this is removed.
    unknown_busy_grace_s: float = DEFAULT_UNKNOWN_BUSY_GRACE_S


POOL_FIELDS = {
    "provider", "min_size", "max_size", "node_cpus", "node_memory_gb", "lifecycle",
    "price_per_node_hour", "idle_timeout_s", "boot_timeout_s", "default_run_cpus",
    "default_run_memory_gb", "fallback", "labels", "taints", "settings", "idle_timeout_mode",
    "daily_budget_usd", "placement", "queue_allowance_s", "unknown_busy_grace_s",
}


def _provider(where: str, name: Any) -> str:
    from dpe_dagster.pools.providers import provider

    provider(name if isinstance(name, str) else repr(name), where)
    return name


def parse_pool(name: str, raw: Any) -> PoolConfig:
    where = f"pools.{name}"
    if not isinstance(name, str) or not POOL_NAME.match(name):
        raise ConfigError(
            f"pools: pool name {name!r} is not allowed; use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    raw = _mapping(where, raw)
    _reject_unknown(where, raw, POOL_FIELDS)
    for required in ("provider", "max_size", "node_cpus", "node_memory_gb", "price_per_node_hour"):
        if required not in raw:
            raise ConfigError(f"{where}.{required}: is required")
    min_size = _number(f"{where}.min_size", raw.get("min_size", 0), minimum=0, integer=True)
    max_size = _number(f"{where}.max_size", raw["max_size"], minimum=max(min_size, 1), integer=True)
    node_cpus = _number(f"{where}.node_cpus", raw["node_cpus"], minimum=0, strict=True)
    node_memory_gb = _number(f"{where}.node_memory_gb", raw["node_memory_gb"], minimum=0, strict=True)
    labels = _mapping(f"{where}.labels", raw.get("labels", {}))
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise ConfigError(f"{where}.labels: key {key!r} is not a valid Kubernetes label key")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise ConfigError(
                f"{where}.labels.{key}: value {value!r} is not a valid Kubernetes label value "
                "(at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
            )
    taints = []
    raw_taints = raw.get("taints", [])
    if not isinstance(raw_taints, (list, tuple)):
        raise ConfigError(f"{where}.taints: must be a list of {{key, value, effect}}")
    for i, taint in enumerate(raw_taints):
        t_where = f"{where}.taints[{i}]"
        taint = _mapping(t_where, taint)
        _reject_unknown(t_where, taint, {"key", "value", "effect"})
        key = _string(f"{t_where}.key", taint.get("key"))
        if not LABEL_KEY.match(key):
            raise ConfigError(f"{t_where}.key: {key!r} is not a valid Kubernetes taint key")
        value = taint.get("value", "")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise ConfigError(f"{t_where}.value: {value!r} is not a valid Kubernetes taint value")
        taints.append(Taint(key, value, _choice(f"{t_where}.effect", taint.get("effect"), TAINT_EFFECTS)))
    default_cpus = _number(f"{where}.default_run_cpus", raw.get("default_run_cpus", node_cpus), minimum=0, strict=True)
    default_mem = _number(
        f"{where}.default_run_memory_gb", raw.get("default_run_memory_gb", node_memory_gb), minimum=0, strict=True
    )
    fallback = raw.get("fallback")
    if fallback is not None:
        _string(f"{where}.fallback", fallback)
        if fallback == name:
            raise ConfigError(f"{where}.fallback: a pool cannot fall back to itself")
    return PoolConfig(
        name=name,
        provider=_provider(f"{where}.provider", raw["provider"]),
        min_size=min_size,
        max_size=max_size,
        node_cpus=float(node_cpus),
        node_memory_gb=float(node_memory_gb),
        lifecycle=_choice(f"{where}.lifecycle", raw.get("lifecycle", "on-demand"), LIFECYCLES),
        price_per_node_hour=float(_number(f"{where}.price_per_node_hour", raw["price_per_node_hour"], minimum=0)),
        idle_timeout_s=float(_number(f"{where}.idle_timeout_s", raw.get("idle_timeout_s", 300), minimum=0)),
        boot_timeout_s=float(_number(f"{where}.boot_timeout_s", raw.get("boot_timeout_s", 600), minimum=0, strict=True)),
        default_run_cpus=float(default_cpus),
        default_run_memory_gb=float(default_mem),
        fallback=fallback,
        labels=dict(labels),
        taints=tuple(taints),
        settings=dict(_mapping(f"{where}.settings", raw.get("settings", {}))),
        daily_budget_usd=(None if raw.get("daily_budget_usd") is None else
                          float(_number(f"{where}.daily_budget_usd", raw["daily_budget_usd"], minimum=0, strict=True))),
        idle_timeout_mode=_choice(f"{where}.idle_timeout_mode", raw.get("idle_timeout_mode", DEFAULT_IDLE_TIMEOUT_MODE),
                                  IDLE_TIMEOUT_MODES),
        placement=_choice(f"{where}.placement", raw.get("placement", DEFAULT_PLACEMENT), PLACEMENTS),
        queue_allowance_s=float(_number(f"{where}.queue_allowance_s", raw.get("queue_allowance_s", DEFAULT_QUEUE_ALLOWANCE_S), minimum=0)),
        unknown_busy_grace_s=float(_number(f"{where}.unknown_busy_grace_s",
                                           raw.get("unknown_busy_grace_s", DEFAULT_UNKNOWN_BUSY_GRACE_S), minimum=0)),
    )


@dataclass(frozen=True)
class Environment:
    """One deployment's dpe configuration: its pools, Spark settings and sensor cadence (loaded by
    `dpe_dagster.environment.load_environment`)."""

    name: str
    pools: Mapping[str, PoolConfig]
    spark: Mapping[str, Any]
    sensor_interval_s: int
    max_concurrent_runs: int
    aws: Mapping[str, Any] = field(default_factory=dict)
    # The pool run pods go to (Spark drivers in client mode); the run's tagged pool then holds
    # its executors. None: run pods go to the tagged pool.
    driver_pool: str | None = None
    # How to load this configuration again (a YAML path or "module:attribute"), e.g. in the
    # daemon's launcher; None for one built in code.
    source: str | None = None

    @property
    def on_kubernetes(self) -> bool:
        """Runs and containers go to Kubernetes: Spark's master is a Kubernetes API server."""
        return str(self.spark.get("master", "")).startswith("k8s://")

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise ConfigError(
                f"node pool {name!r} is not defined in environment {self.name!r}; "
                f"defined pools: {', '.join(sorted(self.pools)) or '(none)'}"
            ) from None


SPARK_MASTERS = ("spark://", "local", "k8s://")


def parse_spark(raw: Any) -> dict[str, Any]:
    raw = _mapping("spark", raw)
    _reject_unknown("spark", raw, {"master", "conf"})
    spark: dict[str, Any] = {}
    if "master" in raw:
        master = _string("spark.master", raw["master"])
        if not master.startswith(SPARK_MASTERS):
            raise ConfigError(f"spark.master: must start with one of {', '.join(SPARK_MASTERS)}; got {master!r}")
        spark["master"] = master
    conf = _mapping("spark.conf", raw.get("conf", {}))
    for key, value in conf.items():
        if not isinstance(key, str) or not key.startswith("spark."):
            raise ConfigError(f"spark.conf: key {key!r} must be a Spark setting starting with 'spark.'")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"spark.conf.{key}: must be a string or number; got {value!r}")
    spark["conf"] = {k: str(v) for k, v in conf.items()}
    return spark


ENVIRONMENT_FIELDS = {"pools", "spark", "sensor_interval_s", "max_concurrent_runs", "aws", "driver_pool"}


def parse_environment(name: str, raw: Any) -> Environment:
    raw = _mapping(name, raw)
    _reject_unknown(name, raw, ENVIRONMENT_FIELDS)
    raw_pools = _mapping("pools", raw.get("pools", {}))
    if not raw_pools:
        raise ConfigError("pools: at least one node pool must be defined")
    pools = {pool_name: parse_pool(pool_name, pool_raw) for pool_name, pool_raw in raw_pools.items()}
    for pool in pools.values():
        if pool.fallback is not None and pool.fallback not in pools:
            raise ConfigError(
                f"pools.{pool.name}.fallback: {pool.fallback!r} is not a defined pool; "
                f"defined pools: {', '.join(sorted(pools))}"
            )
    driver_pool = raw.get("driver_pool")
    if driver_pool is not None and driver_pool not in pools:
        raise ConfigError(f"driver_pool: {driver_pool!r} is not a defined pool; defined pools: {', '.join(sorted(pools))}")
    return Environment(
        name=name,
        pools=pools,
        driver_pool=driver_pool,
        spark=parse_spark(raw.get("spark", {})),
        sensor_interval_s=_number("sensor_interval_s", raw.get("sensor_interval_s", 30), minimum=1, integer=True),
        max_concurrent_runs=_number("max_concurrent_runs", raw.get("max_concurrent_runs", 4), minimum=1, integer=True),
        aws=dict(_mapping("aws", raw.get("aws", {}))),
    )
