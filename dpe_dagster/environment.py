"""Where a project's dpe configuration comes from, loaded once per process and shared.

A *source* is one of:
- a path to a YAML file (`pools.yaml`): the pools and the rest of `dpe_dagster.config.Environment`;
- `"package.module:attribute"`: a Python object, an `Environment`, a mapping, or a callable
  returning either;
- an `Environment` (or a mapping) itself.

With no source given: `DPE_CONFIG` names one; else `[tool.dpe]` in the `pyproject.toml` of the
current folder: `config = "pools.yaml"` (one configuration), or `environments = {local = "...",
...}` with `default = "local"`, and `DPE_ENV` picks one by name. The names are the project's own:
dpe gives none of them a meaning.

Anything secret or per-deployment comes from environment variables: in YAML a value
`{env: NAME}` or `{env: NAME, default: ...}` (read as a YAML scalar, so `"20"` is a number); in
Python `dagster.EnvVar("NAME")`. An unset variable without a default is an error naming the field.

The sensors, the launchers, the coordinator and the resources of one process ask `load_environment`
with the same source and get the same object: it is read again only when the file or the process's
environment variables change.
"""

from __future__ import annotations

import importlib
import os
import threading
import tomllib
from pathlib import Path
from typing import Any, Mapping

import yaml

from dpe_dagster.config import ConfigError, Environment, parse_environment

CONFIG_VARIABLE = "DPE_CONFIG"
ENVIRONMENT_VARIABLE = "DPE_ENV"

_cache: dict[tuple, Environment] = {}
_lock = threading.Lock()


PROJECT_FIELDS = ("config", "default", "demo_job", "environments")


def project_table(root: Path | None = None) -> Mapping[str, Any]:
    """`[tool.dpe]` of the project's pyproject.toml at `root` (default: the current folder)."""
    pyproject = (root or Path.cwd()).resolve() / "pyproject.toml"
    if not pyproject.exists():
        return {}
    try:
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("dpe", {})
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{pyproject}: not valid TOML ({error})") from None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{pyproject}: tool.dpe must be a table")
    unknown = sorted(set(table) - set(PROJECT_FIELDS))
    if unknown:
        raise ConfigError(f"{pyproject}: tool.dpe: unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(PROJECT_FIELDS)}")
    return table


def project_environments(root: Path | None = None) -> tuple[dict[str, str], str | None]:
    """The project's named sources (`[tool.dpe]`) and the default name. Relative paths are resolved
    against `root` (default: the current folder)."""
    root = (root or Path.cwd()).resolve()
    pyproject = root / "pyproject.toml"
    table = project_table(root)
    if "config" in table:
        if "environments" in table:
            raise ConfigError(f"{pyproject}: tool.dpe: set either config or environments, not both")
        named = {"default": table["config"]}
        default = "default"
    else:
        named = table.get("environments", {})
        default = table.get("default")
    if not isinstance(named, Mapping) or not all(isinstance(v, str) and v for v in named.values()):
        raise ConfigError(f"{pyproject}: tool.dpe.environments must map names to sources (a YAML path or "
                          "'module:attribute')")
    if default is not None and default not in named:
        raise ConfigError(f"{pyproject}: tool.dpe.default: {default!r} is not one of the environments "
                          f"({', '.join(sorted(named))})")
    return {name: _absolute(source, root) for name, source in named.items()}, default


def resolve(source: str | os.PathLike | None = None, name: str | None = None,
            root: Path | None = None) -> tuple[str, str]:
    """(name, source) of the configuration to load: the source given, else DPE_CONFIG, else the
    project's `[tool.dpe]` entry named `name` (else DPE_ENV, else its default)."""
    if source is not None:
        source = _absolute(str(source), root or Path.cwd())
        return name or _project_name_of(source, root) or _name_of(source), source
    if os.environ.get(CONFIG_VARIABLE) and name is None:
        source = os.environ[CONFIG_VARIABLE]
        return _name_of(source), _absolute(source, Path.cwd())
    named, default = project_environments(root)
    if not named:
        raise ConfigError(f"{CONFIG_VARIABLE}: no dpe configuration: set {CONFIG_VARIABLE} to a pools YAML file or "
                          "'module:attribute', or add [tool.dpe] config = \"pools.yaml\" to the project's "
                          "pyproject.toml")
    name = name or os.environ.get(ENVIRONMENT_VARIABLE) or default
    if name is None:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE}: must name one of the project's environments "
                          f"({', '.join(sorted(named))}); tool.dpe has no default")
    if name not in named:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE}: unknown environment {name!r}; allowed: {', '.join(sorted(named))}")
    return name, named[name]


_current: Environment | None = None


def _config_fields() -> dict:
    from dagster import Field, StringSource

    return {
        "config": Field(StringSource, is_required=False,
                        description="the dpe configuration: a pools YAML file or 'module:attribute' (default: "
                        "DPE_CONFIG, else the project's [tool.dpe])"),
        "environment": Field(StringSource, is_required=False,
                             description="one of the project's [tool.dpe.environments] by name, when config is unset "
                             "(default: DPE_ENV, else the project's default)"),
    }


# The fields through which a run launcher or coordinator in `dagster.yaml` names its configuration.
CONFIG_FIELDS = _config_fields()


def use(env: Environment) -> Environment:
    """Make `env` this process's configuration: what `current()` returns (the code location's
    definitions call it with the configuration they were built from)."""
    global _current
    _current = env
    return env


def current() -> Environment:
    """The configuration this process's definitions were built from, else the default one."""
    return _current if _current is not None else load_environment()


def load_environment(source: str | os.PathLike | Environment | Mapping | None = None, *, name: str | None = None,
                     root: Path | None = None) -> Environment:
    """The configuration `source` names (see the module docstring), validated; the same object for
    the same source while neither the file nor the environment variables change."""
    if isinstance(source, Environment):
        return source
    if isinstance(source, Mapping):
        return parse_environment(name or "default", _resolve_env_vars(source, ""))
    name, source = resolve(source, name, root)
    key = (name, source, _mtime(source), tuple(sorted(os.environ.items())))
    with _lock:
        if key not in _cache:
            env = _load(name, source)
            _cache.clear()  # one live configuration per source is enough; old keys are stale
            _cache[key] = env
        return _cache[key]


def _load(name: str, source: str) -> Environment:
    if is_python_source(source):
        module_name, _, attribute = source.partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"{source}: cannot load the dpe configuration ({error})") from None
        if callable(value) and not isinstance(value, (Environment, Mapping)):
            value = value()
        if isinstance(value, Environment):
            return _with_source(value, source)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: must be an Environment, a mapping, or a callable returning one; "
                              f"got {type(value).__name__}")
        raw = value
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{source}: no such dpe configuration file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: not valid YAML ({error})") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: must be a YAML mapping with at least `pools`")
    return _with_source(parse_environment(name, _resolve_env_vars(raw, "")), source)


def _with_source(env: Environment, source: str) -> Environment:
    return env.model_copy(update={"source": source})


def _resolve_env_vars(value: Any, where: str) -> Any:
    """Replace `{env: NAME[, default: ...]}` (YAML) and `dagster.EnvVar` (Python) values by the
    variable's value, read as a YAML scalar."""
    from dagster import EnvVar

    if isinstance(value, EnvVar):
        return _variable(where, value.env_var_name, None, has_default=False)
    if isinstance(value, Mapping):
        if "env" in value and set(value) <= {"env", "default"}:
            if not isinstance(value["env"], str) or not value["env"]:
                raise ConfigError(f"{where or 'configuration'}.env: must name an environment variable")
            return _variable(where, value["env"], value.get("default"), has_default="default" in value)
        return {key: _resolve_env_vars(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve_env_vars(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _variable(where: str, variable: str, default: Any, *, has_default: bool) -> Any:
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        if not has_default:
            raise ConfigError(f"{where}: environment variable {variable} is not set (and the field has no default)")
        return default
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def is_python_source(source: str) -> bool:
    module, colon, attribute = source.partition(":")
    return bool(colon) and attribute.isidentifier() and all(part.isidentifier() for part in module.split("."))


def _absolute(source: str, root: Path) -> str:
    return source if is_python_source(source) else str((root / source).resolve())


def _project_name_of(source: str, root: Path | None) -> str | None:
    """The name the project's [tool.dpe] gives this source, if any (e.g. `local`)."""
    try:
        named, _ = project_environments(root)
    except ConfigError:
        return None
    return next((name for name, known in named.items() if known == source), None)


def _name_of(source: str) -> str:
    return source.partition(":")[0].rsplit(".", 1)[-1] if is_python_source(source) else Path(source).stem


def _mtime(source: str) -> float | None:
    if is_python_source(source):
        return None
    try:
        return os.stat(source).st_mtime
    except OSError:
        return None
