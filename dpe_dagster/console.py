"""What every `dpe` command shares, a provider's own commands included: the consoles, how an
error is printed, and loading the environment and the Dagster instance it works on (bad input
exits with 2, the message naming the field)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from dpe_dagster.config import ConfigError

# Reports are wide: keep them readable when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 160)
# Errors are never wrapped: a path or a field name stays whole on one line (and greppable).
err = Console(stderr=True, soft_wrap=True)


def print_error(label: str, message: object) -> None:
    """An error on stderr: the label in red, the message as written (no markup, so `[tool.dpe]`
    and `taints[0]` stay whole)."""
    err.print(f"[red]{escape(label)}[/red] {escape(str(message))}" if label else f"[red]{escape(str(message))}[/red]")


def command_environment(source: Optional[Path] = None):
    """The environment a command works on; a configuration error is printed and exits with 2
    (every command, a provider's own included, loads it this way)."""
    from dpe_dagster.environment import load_environment

    try:
        return load_environment(source)
    except ConfigError as error:
        print_error("configuration error:", error)
        raise typer.Exit(2) from None


def command_instance(must_exist: bool = True):
    """The Dagster instance a command reads (DAGSTER_HOME); exits with 2 when there is none yet."""
    from dagster import DagsterInstance

    from dpe_dagster.paths import dagster_home

    home = dagster_home()
    if must_exist and not (home / "dagster.yaml").exists():
        print_error(f"no dpe instance at {home}:", "run `dpe demo` (or `make demo`) first, or set DAGSTER_HOME")
        raise typer.Exit(2)
    return DagsterInstance.from_config(str(home))
