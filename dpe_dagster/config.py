"""Environment and node-pool configuration: the pydantic models that are both the file format and
the objects the engine reads, validated once at load.

Every error names the field (as a dotted path) and what is allowed, so an operator can fix the
environment file without reading this module. `dpe schema` prints the JSON schema of the file
(shipped as `dpe_dagster/pools.schema.json`, for editors).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from dpe_dagster.errors import ConfigError  # re-exported: the name users catch

LIFECYCLES = ("spot", "on-demand")
# fixed: remove a node idle for idle_timeout_s; auto: the policy decides, never above idle_timeout_s.
IDLE_TIMEOUT_MODES = ("fixed", "auto")
# first-fit: a waiting run goes to the oldest node with room; ending-together: to the node whose
# paid time it lengthens least, by expected ends (scaling/policy.py `place_run`).
PLACEMENTS = ("first-fit", "ending-together")
# The defaults every environment gets unless it says otherwise, chosen by replaying traces through
# the production control loop (bench/RESULTS.md, "Goals, against the tables above").
DEFAULT_IDLE_TIMEOUT_MODE = "auto"
# How long a run may wait for room, at p95 (`wait_target_s`).
DEFAULT_WAIT_TARGET_S = 10.0
DEFAULT_PLACEMENT = "first-fit"
# A node whose busy status the provider cannot tell counts as busy, but only for its idle timeout
# plus this long: a failure that hides the truth must not keep paying for nodes forever.
DEFAULT_UNKNOWN_BUSY_GRACE_S = 300.0
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SPARK_MASTERS = ("spark://", "local", "k8s://")
# A pool name is used as a Kubernetes label value, an ASG tag and a file name: keep it to the
# intersection of what all three accept.
POOL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


# -- field types: each checks its value and says what is allowed ------------------------------
def invalid(message: str, value: Any, at: tuple = ()) -> PydanticCustomError:
    """A validation error with dpe's wording; `at` extends the field's path (a label's key)."""
    return PydanticCustomError("dpe", message + "; got {got}", {"got": repr(value), "at": at})


def Checked(base: Any, check: Callable[[Any], Any], what: str, **field: Any) -> Any:
    """A value of type `base` for which `check` holds; otherwise 'must be <what>; got ...'.
    `field`: the JSON schema's constraints and description (pydantic's `Field`)."""
    def validate(value: Any) -> Any:
        try:
            ok = check(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise invalid(f"must be {what}", value)
        return value

    return Annotated[base, Field(**field), BeforeValidator(validate)]


def Number(*, ge: float | None = None, gt: float | None = None, le: float | None = None, integer: bool = False,
           optional: bool = False, what: str | None = None, description: str | None = None) -> Any:
    """A finite number (or integer) with a lower bound, and an upper one when `le` is given; None
    too when `optional`. `what`: how the error names it (default: 'a number' or 'an integer')."""
    def ok(value: Any) -> bool:
        if value is None:
            return optional
        is_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        return (is_type and not isinstance(value, bool) and math.isfinite(value)
                and (gt is None or value > gt) and (ge is None or value >= ge) and (le is None or value <= le))

    base = int if integer else float
    if le is not None:
        bound = f"{ge:g}-{le:g}"
    else:
        bound = f"> {gt:g}" if gt is not None else f">= {ge:g}"
    kind = what or ("an integer" if integer else "a number")
    return Checked(Optional[base] if optional else base, ok, f"{kind} {bound}", ge=ge, gt=gt, le=le,
                   description=description)


def Choice(allowed: tuple[str, ...], description: str | None = None) -> Any:
    return Checked(Literal[allowed], lambda value: value in allowed, f"one of {', '.join(allowed)}",
                   description=description)


Text = Checked(str, lambda value: isinstance(value, str) and value, "a non-empty string", min_length=1)
Settings = Checked(dict[str, Any], lambda value: isinstance(value, Mapping), "a mapping")


def _provider_name(value: Any) -> str:
    from dpe_dagster.providers import providers, unknown_provider

    if not isinstance(value, str) or value not in providers():
        raise PydanticCustomError("dpe", "{message}",
                                  {"message": unknown_provider(value if isinstance(value, str) else repr(value))})
    return value


def _labels(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise invalid("must be a mapping of Kubernetes label keys to values", value)
    for key, label in value.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise invalid("key is not a valid Kubernetes label key", key)
        if not isinstance(label, str) or not LABEL_VALUE.match(label):
            raise PydanticCustomError("dpe", "value {got} is not a valid Kubernetes label value (at most 63 letters, "
                                      "digits, '-', '_' or '.', starting and ending alphanumeric)",
                                      {"got": repr(label), "at": (key,)})
    return value


class ConfigModel(BaseModel):
    """A part of the file: unknown fields are named with the allowed ones; values stay immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise PydanticCustomError("dpe", "must be a mapping; got {got}", {"got": type(data).__name__})
        allowed = cls.file_fields()
        # dpe fills in the others (parse_pool and parse_environment refuse them in a file)
        unknown = sorted(str(key) for key in data if key not in cls.model_fields)
        if unknown:
            raise PydanticCustomError("dpe", "unknown field(s) {unknown}; allowed: {allowed}",
                                      {"unknown": ", ".join(unknown), "allowed": ", ".join(sorted(allowed))})
        return data

    @classmethod
    def file_fields(cls) -> set[str]:
        """The fields a file may set (not the ones dpe fills in, such as a pool's name)."""
        return {name for name, info in cls.model_fields.items() if not _filled_in(info)}


def _filled_in(info: Any) -> bool:
    return bool((info.json_schema_extra or {}).get("filled_in"))


FILLED_IN = {"json_schema_extra": {"filled_in": True}}


# -- the models ------------------------------------------------------------------------------
class Taint(ConfigModel):
    key: Checked(str, lambda value: LABEL_KEY.match(value), "a valid Kubernetes taint key")
    value: Checked(str, lambda value: LABEL_VALUE.match(value), "a valid Kubernetes taint value") = ""
    effect: Choice(TAINT_EFFECTS)


class PoolConfig(ConfigModel):
    """A named group of identical machines and the rules for sizing it (`pools.<name>`)."""

    name: SkipJsonSchema[str] = Field(**FILLED_IN)
    provider: Annotated[str, Field(description="a registered provider (entry point group dpe.providers; "
                                               "`dpe schema` shows each one's settings)"), BeforeValidator(_provider_name)]
    min_size: Number(ge=0, integer=True, description="nodes kept even when idle") = 0
    max_size: Number(ge=1, integer=True, description="never more nodes than this")
    node_cpus: Number(gt=0, description="CPUs of one node")
    node_memory_gb: Number(gt=0, description="memory of one node, GB")
    lifecycle: Choice(LIFECYCLES) = "on-demand"
    price_per_node_hour: Number(ge=0, description="USD per node-hour (a provider may know the live price)")
    idle_timeout_s: Number(ge=0, description="a node idle this long is removed (the most, in mode auto)") = 300.0
    boot_timeout_s: Number(gt=0, description="a node not ready by then is terminated") = 600.0
    backoff_s: Number(gt=0, description="once a scale-up is overdue past the boot timeout (or failed), how long "
                                        "dpe asks the pool for nothing and places its runs on its fallback") = 600.0
    default_run_cpus: Number(gt=0, description="a run's CPUs when its tags say none (default: what runs can have "
                                               "of a node, node_cpus - reserved_cpus)") = None
    default_run_memory_gb: Number(gt=0, description="a run's memory when its tags say none (default: what runs can "
                                                    "have of a node, node_memory_gb - reserved_memory_gb)") = None
    fallback: Optional[Text] = Field(None, description="the pool a run moves to when this one cannot take it")
    labels: Annotated[dict[str, str], BeforeValidator(_labels)] = Field(default_factory=dict)
    taints: Checked(tuple[Taint, ...], lambda value: isinstance(value, (list, tuple)), "a list of taints") = ()
    settings: Settings = Field(default_factory=dict, description="the provider's own settings, checked by its "
                                                                 "model (`dpe schema`)")
    idle_timeout_mode: Choice(IDLE_TIMEOUT_MODES) = DEFAULT_IDLE_TIMEOUT_MODE
    daily_budget_usd: Number(gt=0, optional=True, description="once paid today (UTC), no more scale-up until "
                                                              "tomorrow") = None
    placement: Choice(PLACEMENTS) = DEFAULT_PLACEMENT
    wait_target_s: Number(ge=0, description="how long a run may wait for room, at p95 (a run's dpe/wait_target_s "
                                            "tag overrides it): room running runs free within it counts instead of "
                                            "a boot, and the longer it is the sooner idle nodes go") = \
        DEFAULT_WAIT_TARGET_S
    unknown_busy_grace_s: Number(ge=0, description="a node whose busy status stays unknown longer than "
                                                   "idle_timeout_s plus this is removed") = DEFAULT_UNKNOWN_BUSY_GRACE_S
    reserved_cpus: Number(ge=0, optional=True, description="CPUs of each node that runs cannot have: the kubelet's "
                          "reservation and the DaemonSets' requests (default: what the provider knows of its "
                          "nodes, else 0)") = None
    reserved_memory_gb: Number(ge=0, optional=True, description="memory (GB) of each node that runs cannot have: "
                               "the kubelet's reservation, the eviction threshold and the DaemonSets' requests "
                               "(default: as reserved_cpus)") = None

    def as_file(self) -> dict[str, Any]:
        """This pool as its fields in a file (`pools.<name>`), which `parse_pool` reads back."""
        return self.model_dump(mode="json", exclude={"name"}, exclude_none=True)

    @model_validator(mode="after")
    def _consistent(self) -> "PoolConfig":
        if self.max_size < self.min_size:
            raise invalid(f"must be an integer >= {self.min_size}", self.max_size, at=("max_size",))
        if self.fallback == self.name:
            raise PydanticCustomError("dpe", "a pool cannot fall back to itself", {"at": ("fallback",)})
        if self.reserved_cpus is None or self.reserved_memory_gb is None:
            from dpe_dagster.providers import provider

            cpus, memory_gb = provider(self.provider).node_reserved(self)
            self = self.model_copy(update={"reserved_cpus": self.reserved_cpus if self.reserved_cpus is not None
                                           else cpus, "reserved_memory_gb": self.reserved_memory_gb
                                           if self.reserved_memory_gb is not None else memory_gb})
        if self.reserved_cpus >= self.node_cpus:
            raise invalid(f"must be less than node_cpus ({self.node_cpus:g}): runs need room on a node",
                          self.reserved_cpus, at=("reserved_cpus",))
        if self.reserved_memory_gb >= self.node_memory_gb:
            raise invalid(f"must be less than node_memory_gb ({self.node_memory_gb:g}): runs need room on a node",
                          self.reserved_memory_gb, at=("reserved_memory_gb",))
        if self.default_run_cpus is None or self.default_run_memory_gb is None:
            # A run that says nothing takes what a node has for runs: one whole node.
            self = self.model_copy(update={
                "default_run_cpus": self.room_cpus if self.default_run_cpus is None else self.default_run_cpus,
                "default_run_memory_gb": self.room_memory_gb if self.default_run_memory_gb is None
                else self.default_run_memory_gb})
        return self

    # What runs' pods can have of one node: what packing, placement and a run's share of a node count.
    @property
    def room_cpus(self) -> float:
        return self.node_cpus - (self.reserved_cpus or 0.0)

    @property
    def room_memory_gb(self) -> float:
        return self.node_memory_gb - (self.reserved_memory_gb or 0.0)


def _spark_master(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(SPARK_MASTERS):
        raise invalid(f"must start with one of {', '.join(SPARK_MASTERS)}", value)
    return value


def _spark_conf(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise invalid("must be a mapping of Spark settings", value)
    for key, setting in value.items():
        if not isinstance(key, str) or not key.startswith("spark."):
            raise invalid("key must be a Spark setting starting with 'spark.'", key)
        if not isinstance(setting, (str, int, float)) or isinstance(setting, bool):
            raise invalid("must be a string or number", setting, at=(key,))
    return {key: str(setting) for key, setting in value.items()}


def _executor_conf(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise invalid("must be a mapping of pool names to Spark settings", value)
    out = {}
    for pool, conf in value.items():
        try:
            out[pool] = _spark_conf(conf)
        except PydanticCustomError as error:  # named under its pool
            context = dict(error.context or {})
            context["at"] = (pool, *context.get("at", ()))
            raise PydanticCustomError(error.type, error.message_template, context) from None
    return out


class SparkConfig(ConfigModel):
    master: Annotated[Optional[str], Field(description="spark://, local[...] or k8s://; default: the master of "
                                                       "the run's local pool"), BeforeValidator(_spark_master)] = None
    conf: Annotated[dict[str, str], BeforeValidator(_spark_conf)] = Field(default_factory=dict)
    executor_conf: Annotated[dict[str, dict[str, str]], BeforeValidator(_executor_conf)] = Field(
        default_factory=dict, description="Spark settings by the pool a run is placed on, added to its session "
        "(on Kubernetes: its executors' selector, pod template and size)")

    def conf_for(self, pool: str | None) -> dict[str, str]:
        """The settings of a run placed on `pool`: every run's, then the pool's own."""
        return {**self.conf, **self.executor_conf.get(pool or "", {})}


class KubernetesSettings(ConfigModel):
    """Where runs, containers and Spark executors go when the environment runs on Kubernetes."""

    namespace: Checked(str, lambda value: isinstance(value, str) and POOL_NAME.match(value),
                       "a Kubernetes namespace name") = "dagster"


SANDBOX = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class Environment(ConfigModel):
    """One deployment's dpe configuration: its pools, Spark settings and sensor cadence (loaded by
    `dpe_dagster.environment.load_environment`)."""

    name: SkipJsonSchema[str] = Field(**FILLED_IN)
    pools: Checked(dict[str, PoolConfig], lambda value: isinstance(value, Mapping), "a mapping of pool names to "
                   "pools", min_length=1)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    sensor_interval_s: Number(ge=1, integer=True, description="seconds between autoscaler ticks") = 30
    max_concurrent_runs: Number(ge=1, integer=True) = 4
    # The environment-wide blocks installed providers own, by key (`Provider.environment_models`):
    # written at the top level of the file, checked by the provider's model, read with `block`.
    blocks: SkipJsonSchema[dict[str, Settings]] = Field(default_factory=dict, **FILLED_IN)
    # The pool run pods go to (Spark drivers in client mode); the run's tagged pool then holds
    # its executors. None: run pods go to the tagged pool.
    driver_pool: Optional[Text] = None
    # Runs (the k8s run launcher), container assets and Spark executors are pods in this namespace.
    kubernetes: Optional[KubernetesSettings] = Field(None, description="set when runs and containers go to "
                                                                       "Kubernetes: their namespace")
    sandbox: Checked(Optional[str], lambda value: value is None or (isinstance(value, str) and SANDBOX.match(value)),
                     "'package.module:attribute'", description="what `dpe demo` starts first to stand in for the "
                     "clouds this environment talks to: a context manager factory given the environment (e.g. an "
                     "emulated cluster); none for real ones") = None
    # How to load this configuration again (a YAML path or "module:attribute"), e.g. in the
    # daemon's launcher; None for one built in code.
    source: SkipJsonSchema[Optional[str]] = Field(None, **FILLED_IN)

    def block(self, key: str) -> Mapping[str, Any]:
        """The provider block `key` of this environment as written (empty when it has none)."""
        return self.blocks.get(key, {})

    @model_validator(mode="after")
    def _pools_named_exist(self) -> "Environment":
        named = [(pool.fallback, ("pools", pool.name, "fallback")) for pool in self.pools.values()]
        named += [(pool, ("spark", "executor_conf", pool)) for pool in self.spark.executor_conf]
        named.append((self.driver_pool, ("driver_pool",)))
        for name, at in named:
            if name is not None and name not in self.pools:
                raise PydanticCustomError("dpe", "{name} is not a defined pool; defined pools: {defined}",
                                          {"name": repr(name), "defined": ", ".join(sorted(self.pools)), "at": at})
        return self

    def as_file(self) -> dict[str, Any]:
        """This configuration as the mapping a file holds, which `parse_environment` reads back."""
        fields = self.model_dump(mode="json", exclude={"name": True, "source": True, "blocks": True,
                                                       "pools": {"__all__": {"name"}}}, exclude_none=True)
        return {**fields, **{key: dict(block) for key, block in self.blocks.items()}}

    @property
    def on_kubernetes(self) -> bool:
        """Runs and containers go to Kubernetes (the `kubernetes` block; Spark's master on a
        Kubernetes API server implies it)."""
        return self.kubernetes is not None or (self.spark.master or "").startswith("k8s://")

    @property
    def namespace(self) -> str:
        return self.kubernetes.namespace if self.kubernetes is not None else KubernetesSettings().namespace

    def pool(self, name: str) -> PoolConfig:
        try:
            return self.pools[name]
        except KeyError:
            raise ConfigError(
                f"node pool {name!r} is not defined in environment {self.name!r}; "
                f"defined pools: {', '.join(sorted(self.pools)) or '(none)'}"
            ) from None


POOL_FIELDS = PoolConfig.file_fields()
ENVIRONMENT_FIELDS = Environment.file_fields()


# -- loading ---------------------------------------------------------------------------------
def parse_pool(name: str, raw: Any) -> PoolConfig:
    """One pool from its fields in the file (`pools.<name>`), its `settings` checked by its provider."""
    pool = validated(PoolConfig, _named(name, raw), prefix=("pools", name))
    problems = _settings_problems(pool)
    if problems:
        raise ConfigError("\n".join(problems))
    return pool


def parse_environment(name: str, raw: Any) -> Environment:
    """A whole environment from the file's mapping; `name` is what dpe calls it."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: must be a mapping with at least `pools`; got {type(raw).__name__}")
    if not raw.get("pools"):
        raise ConfigError("pools: at least one node pool must be defined")
    _refuse_filled_in(name, Environment, raw)
    owned = provider_blocks()
    unknown = sorted(str(key) for key in raw if key not in Environment.model_fields and key not in owned)
    if unknown:
        allowed = sorted(Environment.file_fields() | set(owned))
        raise ConfigError(f"{name}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)} "
                          "(blocks of the installed providers included)")
    data = {key: value for key, value in raw.items() if key not in owned}
    data.update(name=name, blocks={key: raw[key] for key in raw if key in owned})
    if isinstance(raw["pools"], Mapping):
        data["pools"] = {pool: _named(pool, fields) for pool, fields in raw["pools"].items()}
    env = validated(Environment, data, prefix=())
    _check_provider_settings(env)
    return env


def _check_provider_settings(env: Environment) -> None:
    """Each pool's `settings`, and the environment blocks its provider owns (`Provider.environment_models`), by the
    provider's own models: all the errors at once, naming the field."""
    from dpe_dagster.providers import provider

    problems, owned = [], {}
    for pool in env.pools.values():
        owned.update(provider(pool.provider).environment_models())
        problems += _settings_problems(pool)
    for key, model in owned.items():
        problems += _problems(model, env.block(key), (key,))
    if problems:
        raise ConfigError("\n".join(problems))


def provider_blocks() -> dict[str, str]:
    """Environment block key -> the installed provider that owns it."""
    from dpe_dagster.providers import providers

    return {key: name for name, kind in sorted(providers().items()) for key in kind.environment_models()}


def _settings_problems(pool: PoolConfig) -> list[str]:
    from dpe_dagster.providers import provider

    model = provider(pool.provider).settings_model()
    return [] if model is None else _problems(model, pool.settings, ("pools", pool.name, "settings"))


def _problems(model: type[ConfigModel], data: Any, prefix: tuple) -> list[str]:
    try:
        validated(model, data, prefix)
    except ConfigError as error:
        return str(error).splitlines()
    return []


def _named(name: Any, raw: Any) -> Any:
    if not isinstance(name, str) or not POOL_NAME.match(name):
        raise ConfigError(f"pools: pool name {name!r} is not allowed; use 1-63 lowercase letters, digits and '-', "
                          "starting and ending with a letter or digit")
    if isinstance(raw, Mapping):
        _refuse_filled_in(f"pools.{name}", PoolConfig, raw)
        return {**raw, "name": name}
    return raw


def _refuse_filled_in(where: str, model: type[ConfigModel], raw: Mapping) -> None:
    given = sorted(set(raw) & (set(model.model_fields) - model.file_fields()))
    if given:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(given)}; allowed: {', '.join(sorted(model.file_fields()))}")


def validated(model: type[ConfigModel], data: Any, prefix: tuple) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError("\n".join(_describe(problem, prefix) for problem in error.errors())) from None


def _describe(problem: Mapping[str, Any], prefix: tuple) -> str:
    """One pydantic error as 'dotted.path: what is allowed; got ...'."""
    context = problem.get("ctx") or {}
    path = (*prefix, *problem["loc"], *context.get("at", ()))
    kind = problem["type"]
    if kind == "missing":
        message = "is required"
    elif kind == "dpe":
        message = problem["msg"]
    else:  # a check pydantic made itself (a type inside a list, say)
        message = f"{problem['msg'][0].lower()}{problem['msg'][1:]}; got {problem.get('input')!r}"
    return f"{_dotted(path) or 'configuration'}: {message}"


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(("function-", "[key]")):
            text += f".{part}" if text else str(part)
    return text


def schema() -> dict[str, Any]:
    """The JSON schema of a dpe configuration file. Any value may instead be read from an
    environment variable: `{env: NAME}` or `{env: NAME, default: ...}`."""
    from dpe_dagster.providers import providers

    document = Environment.model_json_schema()
    definitions = document.setdefault("$defs", {})
    by_provider = []
    for name, kind in sorted(providers().items()):  # what each installed provider checks itself
        model = kind.settings_model()
        if model is not None:
            definitions[model.__name__] = _own_schema(model, definitions)
            by_provider.append({"if": {"properties": {"provider": {"const": name}}, "required": ["provider"]},
                                "then": {"properties": {"settings": {"$ref": f"#/$defs/{model.__name__}"}}}})
        for key, block in kind.environment_models().items():
            definitions[block.__name__] = _own_schema(block, definitions)
            document["properties"][key] = {"description": f"for provider {name}",
                                           "$ref": f"#/$defs/{block.__name__}"}
    if by_provider:
        definitions["PoolConfig"]["allOf"] = by_provider
    for part in (document, *definitions.values()):
        for name, field in part.get("properties", {}).items():
            kept = {key: field.pop(key) for key in ("title", "description", "default") if key in field}
            part["properties"][name] = {**kept, "anyOf": [field, {"$ref": "#/$defs/FromEnvironment"}]}
    definitions["FromEnvironment"] = {
        "description": "the value of an environment variable, read as a YAML scalar",
        "type": "object", "additionalProperties": False, "required": ["env"],
        "properties": {"env": {"type": "string", "minLength": 1}, "default": {}},
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **document, "title": "dpe configuration"}


def _own_schema(model: type[ConfigModel], definitions: dict) -> dict:
    """A model's schema with its own definitions moved into the document's."""
    part = model.model_json_schema()
    definitions.update(part.pop("$defs", {}))
    return part
